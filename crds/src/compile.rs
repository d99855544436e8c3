//! Compiles the custom resources into one [`GatewayConfig`] per namespace.
//! Pure: the operator and `kubectl tollgate local` feed it the objects they
//! have, and report the problems it returns as conditions or errors.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::policy::PolicyMode;
use crate::provider::LLMProviderSpec;
use crate::quota::{QuotaLimit, QuotaSubjects};
use crate::{ClusterEgressQuota, EgressPolicy, EgressQuota, LLMProvider, TrustAnchor};
use tollgate_wire::config::{
    CompiledLimit, CompiledModel, CompiledPolicy, CompiledProvider, CompiledQuota,
    CredentialsSource, EgressDestination, GATEWAY_CONFIG_VERSION, GatewayConfig, HostTrust,
    LimitWindow, PriceTable, ProviderApi, Requirement, Route, Selector, SelectorOperator,
    policy_hash,
};
use tollgate_wire::config::{
    EntraIdentitySource, GoogleIdentitySource, VertexTarget, WebIdentitySource,
    is_bedrock_model_id, is_deployment_name, is_gemini_model_name, is_vertex_path_name,
};
use tollgate_wire::time_zone::TimeZoneName;

/// The objects compilation reads. Namespaced lists may hold every namespace;
/// compilation picks what applies.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterObjects<'a> {
    pub providers: &'a [LLMProvider],
    pub policies: &'a [EgressPolicy],
    pub quotas: &'a [EgressQuota],
    pub cluster_quotas: &'a [ClusterEgressQuota],
    pub trust_anchors: &'a [TrustAnchor],
}

/// A cross-object problem, reported on the object named here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Kind/namespace/name` or `Kind/name`.
    pub object: String,
    /// A CamelCase reason for the condition.
    pub reason: &'static str,
    pub message: String,
}

/// A compiled config and what was wrong on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub config: GatewayConfig,
    pub problems: Vec<Problem>,
}

/// Compiles the config for `namespace`, whose labels pick cluster quotas.
/// Whatever refers to something missing is left out (fail closed) and reported.
pub fn compile_namespace_config(
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    objects: ClusterObjects<'_>,
) -> Compiled {
    let mut problems = Vec::new();
    let mut providers: BTreeMap<String, CompiledProvider> = BTreeMap::new();

    let mut policies: Vec<&EgressPolicy> = objects
        .policies
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(namespace) && p.spec.mode != PolicyMode::Disabled
        })
        .collect();
    policies.sort_by_key(|p| p.name_any());

    let mut compiled_policies = Vec::new();
    for policy in policies {
        let object = format!("EgressPolicy/{namespace}/{}", policy.name_any());
        let pod_selector = match policy
            .spec
            .pod_selector
            .as_ref()
            .map(convert_selector)
            .transpose()
        {
            Ok(s) => s.unwrap_or_default(),
            Err(message) => {
                problems.push(Problem {
                    object,
                    reason: "InvalidSelector",
                    message,
                });
                continue;
            }
        };
        let mut routes = Vec::new();
        for allow in &policy.spec.allow {
            let Some(provider) = objects
                .providers
                .iter()
                .find(|p| p.name_any() == allow.provider_ref)
            else {
                problems.push(Problem {
                    object: object.clone(),
                    reason: "ProviderNotFound",
                    message: format!(
                        "LLMProvider {:?} does not exist; its models are not allowed until it does",
                        allow.provider_ref
                    ),
                });
                continue;
            };
            if !providers.contains_key(&allow.provider_ref) {
                match compile_provider(provider, objects.trust_anchors) {
                    Ok(p) => {
                        providers.insert(allow.provider_ref.clone(), p);
                    }
                    Err(problem) => {
                        problems.push(problem);
                        continue;
                    }
                }
            }
            routes.push(Route {
                provider: allow.provider_ref.clone(),
                model_globs: allow.models.clone(),
                max_tokens: allow.max_tokens,
            });
        }
        let spec = &policy.spec;
        compiled_policies.push(CompiledPolicy {
            name: policy.name_any(),
            pod_selector,
            mode: spec.mode,
            routes,
            failover: spec.failover,
            max_request_bytes: spec.guards.max_request_bytes,
            block_secrets: spec.guards.block_secrets,
            header_allowlist: spec.guards.header_allowlist.clone(),
            fail_mode: spec.fail_mode,
            allow_opt_out: spec.injection.allow_opt_out,
            egress: spec
                .egress
                .iter()
                .map(|e| EgressDestination {
                    cidr: e.cidr.clone(),
                    ports: e.ports.clone(),
                })
                .collect(),
        });
    }

    let mut quotas = Vec::new();
    for q in objects
        .quotas
        .iter()
        .filter(|q| q.namespace().as_deref() == Some(namespace))
    {
        let id = format!("{namespace}/{}", q.name_any());
        let object = format!("EgressQuota/{id}");
        if let Some(compiled) = compile_quota(
            &object,
            id,
            &q.spec.subjects,
            &q.spec.limits,
            q.spec.enforcement,
            q.spec.fail_mode,
            &mut problems,
        ) {
            quotas.push(compiled);
        }
    }
    for q in objects.cluster_quotas {
        let object = format!("ClusterEgressQuota/{}", q.name_any());
        match convert_selector(&q.spec.namespace_selector) {
            Ok(selector) if selector.matches(namespace_labels) => {
                let id = format!("cluster/{}", q.name_any());
                if let Some(compiled) = compile_quota(
                    &object,
                    id,
                    &q.spec.subjects,
                    &q.spec.limits,
                    q.spec.enforcement,
                    q.spec.fail_mode,
                    &mut problems,
                ) {
                    quotas.push(compiled);
                }
            }
            Ok(_) => {}
            Err(message) => problems.push(Problem {
                object,
                reason: "InvalidSelector",
                message,
            }),
        }
    }
    quotas.sort_by(|a, b| a.id.cmp(&b.id));

    let mut config = GatewayConfig {
        version: GATEWAY_CONFIG_VERSION,
        namespace: namespace.to_string(),
        policy_hash: String::new(),
        policies: compiled_policies,
        providers: providers.into_values().collect(),
        quotas,
    };
    config.policy_hash = policy_hash(&config);
    Compiled { config, problems }
}

/// The web identity a provider's `aws.webIdentity` compiles to: the role
/// and the STS endpoint (default `https://sts.<region>.amazonaws.com`, or
/// `.amazonaws.com.cn` in China), which must be a plain https URL whose host
/// is one of `hosts`. `Ok(None)` without web identity; the operator's
/// `CredentialsResolved` condition uses the same check.
pub fn web_identity_source(spec: &LLMProviderSpec) -> Result<Option<WebIdentitySource>, String> {
    let Some(aws) = spec.aws.as_ref() else {
        return Ok(None);
    };
    let Some(identity) = aws.web_identity.as_ref() else {
        return Ok(None);
    };
    if spec.credentials_ref.is_some() {
        return Err(
            "credentialsRef and aws.webIdentity are exclusive: a provider has one source of credentials"
                .into(),
        );
    }
    let region = &aws.region;
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    let sts_url = identity
        .sts_url
        .clone()
        .unwrap_or_else(|| format!("https://sts.{region}.{suffix}"));
    if !sts_host(&sts_url).is_some_and(|host| spec.hosts.iter().any(|h| h == host)) {
        return Err(format!(
            "aws.webIdentity: the STS endpoint {sts_url:?} must be a plain https URL (no user, query or fragment) whose host is listed in hosts"
        ));
    }
    Ok(Some(WebIdentitySource {
        role_arn: identity.role_arn.clone(),
        sts_url,
    }))
}

/// The workload identity a provider's `gcp.workloadIdentity` compiles to:
/// the pool provider, the token endpoint (default
/// `https://sts.googleapis.com/v1/token`) and, with a service account, its
/// `generateAccessToken` URL (on `https://iamcredentials.googleapis.com` by
/// default); each a plain https URL whose host is one of `hosts`. `Ok(None)`
/// without workload identity; the operator's `CredentialsResolved`
/// condition uses the same check.
pub fn google_identity_source(
    spec: &LLMProviderSpec,
) -> Result<Option<GoogleIdentitySource>, String> {
    let Some(identity) = spec.gcp.as_ref().and_then(|g| g.workload_identity.as_ref()) else {
        return Ok(None);
    };
    if spec.credentials_ref.is_some() {
        return Err(
            "credentialsRef and gcp.workloadIdentity are exclusive: a provider has one source of credentials"
                .into(),
        );
    }
    let listed = |url: &str| sts_host(url).is_some_and(|host| spec.hosts.iter().any(|h| h == host));
    let sts_url = identity
        .sts_url
        .clone()
        .unwrap_or_else(|| "https://sts.googleapis.com/v1/token".into());
    if !listed(&sts_url) {
        return Err(format!(
            "gcp.workloadIdentity: the token endpoint {sts_url:?} must be a plain https URL (no user, query or fragment) whose host is listed in hosts"
        ));
    }
    // The CRD's patterns, again: local mode compiles without an API server,
    // and both values go into a request (the account into a URL path).
    let pool_ok = identity
        .audience
        .strip_prefix("//iam.googleapis.com/projects/")
        .is_some_and(|rest| {
            rest.contains("/workloadIdentityPools/")
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-".contains(&b))
        });
    let account_ok = identity.service_account.as_deref().is_none_or(|account| {
        account.ends_with(".gserviceaccount.com")
            && account.bytes().filter(|b| *b == b'@').count() == 1
            && account
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"@.-".contains(&b))
    });
    if !pool_ok || !account_ok {
        return Err(
            "gcp.workloadIdentity: audience must name a workload identity pool provider (//iam.googleapis.com/projects/...) and serviceAccount a service account email"
                .into(),
        );
    }
    let impersonation_url = match &identity.service_account {
        None => None,
        Some(account) => {
            let base = identity
                .iam_credentials_url
                .as_deref()
                .unwrap_or("https://iamcredentials.googleapis.com");
            if !listed(base) {
                return Err(format!(
                    "gcp.workloadIdentity: the IAM Credentials endpoint {base:?} must be a plain https URL (no user, query or fragment) whose host is listed in hosts"
                ));
            }
            Some(format!(
                "{}/v1/projects/-/serviceAccounts/{account}:generateAccessToken",
                base.trim_end_matches('/')
            ))
        }
    };
    Ok(Some(GoogleIdentitySource {
        audience: identity.audience.clone(),
        sts_url,
        impersonation_url,
    }))
}

/// The workload identity a provider's `azure.workloadIdentity` compiles
/// to: the tenant's Entra ID token endpoint (on
/// `https://login.microsoftonline.com` by default), a plain https URL whose
/// host is one of `hosts`, and the application. `Ok(None)` without workload
/// identity; the operator's `CredentialsResolved` condition uses the same
/// check.
pub fn entra_identity_source(
    spec: &LLMProviderSpec,
) -> Result<Option<EntraIdentitySource>, String> {
    let Some(identity) = spec
        .azure
        .as_ref()
        .and_then(|a| a.workload_identity.as_ref())
    else {
        return Ok(None);
    };
    if spec.credentials_ref.is_some() {
        return Err(
            "credentialsRef and azure.workloadIdentity are exclusive: a provider has one source of credentials"
                .into(),
        );
    }
    let authority = identity
        .authority_host
        .as_deref()
        .unwrap_or("https://login.microsoftonline.com")
        .trim_end_matches('/');
    let plain_id = |id: &str| {
        let groups: Vec<&str> = id.split('-').collect();
        groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
            && groups
                .iter()
                .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if !plain_id(&identity.tenant_id) || !plain_id(&identity.client_id) {
        return Err("azure.workloadIdentity: tenantID and clientID must be GUIDs".into());
    }
    let listed = sts_host(authority).is_some_and(|host| spec.hosts.iter().any(|h| h == host));
    if !listed || authority.trim_start_matches("https://").contains('/') {
        return Err(format!(
            "azure.workloadIdentity: the authority {authority:?} must be a plain https URL with no path (no user, query or fragment) whose host is listed in hosts"
        ));
    }
    // Each sovereign cloud has its own Entra ID and its own Azure OpenAI
    // audience; any other authority (a proxy, a test) is the public cloud's.
    let scope = match sts_host(authority) {
        Some(host) if host.ends_with(".us") => "https://cognitiveservices.azure.us/.default",
        Some(host) if host.ends_with(".cn") => "https://cognitiveservices.azure.cn/.default",
        _ => "https://cognitiveservices.azure.com/.default",
    };
    Ok(Some(EntraIdentitySource {
        token_url: format!("{authority}/{}/oauth2/v2.0/token", identity.tenant_id),
        client_id: identity.client_id.clone(),
        scope: scope.into(),
    }))
}

/// The host of a plain `https://host[:port][/path]` URL; `None` for
/// anything with user info, a query, a fragment or an IPv6 literal.
fn sts_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if path.contains(['?', '#']) || authority.contains(['@', '[', ']', '?', '#']) {
        return None;
    }
    let (host, port) = authority.split_once(':').unwrap_or((authority, "443"));
    let port_ok = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    (!host.is_empty() && port_ok).then_some(host)
}

fn compile_provider(
    provider: &LLMProvider,
    anchors: &[TrustAnchor],
) -> Result<CompiledProvider, Problem> {
    let spec = &provider.spec;
    let object = format!("LLMProvider/{}", provider.name_any());
    let upstream_trust = match &spec.tls {
        None => Vec::new(),
        Some(tls) => {
            let Some(anchor) = anchors
                .iter()
                .find(|a| a.name_any() == tls.trust_anchor_ref)
            else {
                return Err(Problem {
                    object,
                    reason: "TrustAnchorNotFound",
                    message: format!(
                        "TrustAnchor {:?} does not exist; the provider is unusable until it does (pins are never skipped)",
                        tls.trust_anchor_ref
                    ),
                });
            };
            anchor
                .spec
                .upstream
                .iter()
                .filter(|u| spec.hosts.contains(&u.host))
                .map(|u| HostTrust {
                    host: u.host.clone(),
                    ca_bundle_pem: u.ca_bundle.clone(),
                    spki_pins: u.spki_pins.clone(),
                })
                .collect()
        }
    };
    let azure = spec.api == ProviderApi::AzureOpenai;
    let invalid = |message: String| Problem {
        object: object.clone(),
        reason: "InvalidProvider",
        message,
    };
    if (spec.api == ProviderApi::Bedrock) != spec.aws.is_some() {
        return Err(invalid(
            "aws (with region) is required for api bedrock and allowed for no other api".into(),
        ));
    }
    let web_identity = web_identity_source(spec).map_err(invalid)?;
    if (spec.api == ProviderApi::Vertex) != spec.gcp.is_some() {
        return Err(invalid(
            "gcp (with project and location) is required for api vertex and allowed for no other api"
                .into(),
        ));
    }
    let google_identity = google_identity_source(spec).map_err(invalid)?;
    let entra_identity = entra_identity_source(spec).map_err(invalid)?;
    if let Some(gcp) = &spec.gcp
        && !(is_vertex_path_name(&gcp.project) && is_vertex_path_name(&gcp.location))
    {
        return Err(invalid(format!(
            "gcp: project {:?} and location {:?} must each be 1-63 of A-Za-z0-9._-",
            gcp.project, gcp.location
        )));
    }
    if azure != spec.azure.is_some() {
        return Err(invalid(
            "azure (with apiVersion) is required for api azureOpenai and allowed for no other api"
                .into(),
        ));
    }
    for model in &spec.models {
        match (&model.deployment, azure) {
            (Some(_), false) => {
                return Err(invalid(format!(
                    "model {:?}: deployment applies to api azureOpenai only",
                    model.name
                )));
            }
            (deployment, true) => {
                let upstream = deployment.as_deref().unwrap_or(&model.name);
                if !is_deployment_name(upstream) {
                    return Err(invalid(format!(
                        "model {:?}: {upstream:?} cannot be an Azure deployment name (1-64 of A-Za-z0-9._-); set deployment",
                        model.name
                    )));
                }
                let taken = spec.models.iter().any(|other| {
                    other.name != model.name
                        && (other.name == upstream || other.aliases.iter().any(|a| a == upstream))
                });
                if deployment.is_some() && taken {
                    return Err(invalid(format!(
                        "model {:?}: deployment {upstream:?} is another model's name or alias",
                        model.name
                    )));
                }
            }
            (None, false) => {}
        }
        if spec.api == ProviderApi::Bedrock && !is_bedrock_model_id(&model.name) {
            return Err(invalid(format!(
                "model {:?} cannot be a Bedrock model id (1-128 of A-Za-z0-9._:-; ARNs are not served)",
                model.name
            )));
        }
        if matches!(spec.api, ProviderApi::Gemini | ProviderApi::Vertex)
            && !is_gemini_model_name(&model.name)
        {
            return Err(invalid(format!(
                "model {:?} cannot be a Gemini model in a path (1-128 of A-Za-z0-9._-)",
                model.name
            )));
        }
        let tiers = &model.pricing.service_tiers;
        if let Some(twice) = tiers
            .iter()
            .enumerate()
            .find(|(i, t)| tiers[..*i].iter().any(|u| u.name == t.name))
        {
            return Err(Problem {
                object,
                reason: "InvalidPricing",
                message: format!(
                    "model {:?} prices service tier {:?} twice",
                    model.name, twice.1.name
                ),
            });
        }
    }
    Ok(CompiledProvider {
        name: provider.name_any(),
        api: spec.api,
        base_url: spec.base_url.clone(),
        hosts: spec.hosts.clone(),
        credentials: spec.credentials_ref.as_ref().map(|c| CredentialsSource {
            secret_name: c.secret_name.clone(),
            keys: c.keys.clone(),
        }),
        models: spec
            .models
            .iter()
            .map(|m| CompiledModel {
                name: m.name.clone(),
                aliases: m.aliases.clone(),
                deployment: m.deployment.clone(),
                pricing: PriceTable::new(m.pricing.clone()),
            })
            .collect(),
        upstream_trust,
        azure_api_version: spec.azure.as_ref().map(|a| a.api_version.clone()),
        aws_region: spec.aws.as_ref().map(|a| a.region.clone()),
        web_identity,
        vertex: spec.gcp.as_ref().map(|g| VertexTarget {
            project: g.project.clone(),
            location: g.location.clone(),
        }),
        google_identity,
        entra_identity,
        connect_timeout_ms: spec.timeouts.connect_millis,
        first_byte_timeout_ms: spec.timeouts.first_byte_millis,
        idle_timeout_ms: spec.timeouts.idle_millis,
    })
}

fn compile_quota(
    object: &str,
    id: String,
    subjects: &QuotaSubjects,
    limits: &[QuotaLimit],
    enforcement: crate::quota::Enforcement,
    fail_mode: crate::policy::FailMode,
    problems: &mut Vec<Problem>,
) -> Option<CompiledQuota> {
    let pod_selector = match subjects
        .pod_selector
        .as_ref()
        .map(convert_selector)
        .transpose()
    {
        Ok(s) => s,
        Err(message) => {
            problems.push(Problem {
                object: object.to_string(),
                reason: "InvalidSelector",
                message,
            });
            return None;
        }
    };
    let mut compiled = Vec::new();
    for limit in limits {
        let (window, time_zone) = match limit_window(limit) {
            Ok(window) => window,
            Err(message) => {
                problems.push(Problem {
                    object: object.to_string(),
                    reason: "InvalidLimit",
                    message,
                });
                return None;
            }
        };
        compiled.push(CompiledLimit {
            name: limit.name.clone(),
            window,
            time_zone,
            tokens: limit.tokens,
            requests: limit.requests,
            cost_micro_usd: limit.cost_micro_usd,
            model_globs: limit.models.clone(),
            providers: limit.providers.clone(),
        });
    }
    Some(CompiledQuota {
        id,
        service_accounts: subjects.service_accounts.clone(),
        pod_selector,
        limits: compiled,
        enforcement,
        fail_mode,
    })
}

/// A limit's window and time zone, or why it has none (exactly one of
/// `window` and `rolling`, a rolling duration that parses, a zone the
/// bundled database holds, on a calendar window only). The compiler and the
/// operator's `Valid` condition share this one check.
pub fn limit_window(limit: &QuotaLimit) -> Result<(LimitWindow, Option<TimeZoneName>), String> {
    let name = &limit.name;
    let window = match (&limit.window, &limit.rolling) {
        (Some(w), None) => LimitWindow::Calendar(*w),
        (None, Some(r)) => LimitWindow::RollingSeconds(parse_rolling(r).ok_or_else(|| {
            format!("limit {name:?}: rolling {r:?} is not a duration such as 90m")
        })?),
        _ => {
            return Err(format!(
                "limit {name:?} needs exactly one of window or rolling"
            ));
        }
    };
    let zone = match (&limit.time_zone, window) {
        (None, _) => None,
        (Some(zone), LimitWindow::Calendar(_)) => {
            Some(TimeZoneName::parse(zone).map_err(|e| format!("limit {name:?}: timeZone {e}"))?)
        }
        (Some(_), LimitWindow::RollingSeconds(_)) => {
            return Err(format!(
                "limit {name:?}: timeZone applies to a calendar window, not to a rolling one"
            ));
        }
    };
    Ok((window, zone))
}

/// Parses `1h30m`, `90m`, `45s` into seconds. Zero and overflow are refused.
pub fn parse_rolling(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(d) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(d))?,
            );
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    (number.is_none() && total > 0).then_some(total)
}

/// A Kubernetes label selector in the form the gateway evaluates; an error
/// names an operator other than In, NotIn, Exists and DoesNotExist.
pub fn convert_selector(selector: &LabelSelector) -> Result<Selector, String> {
    let mut match_expressions = Vec::new();
    for e in selector.match_expressions.iter().flatten() {
        let operator = match e.operator.as_str() {
            "In" => SelectorOperator::In,
            "NotIn" => SelectorOperator::NotIn,
            "Exists" => SelectorOperator::Exists,
            "DoesNotExist" => SelectorOperator::DoesNotExist,
            other => {
                return Err(format!(
                    "selector operator {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                ));
            }
        };
        match_expressions.push(Requirement {
            key: e.key.clone(),
            operator,
            values: e.values.clone().unwrap_or_default(),
        });
    }
    Ok(Selector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        match_expressions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(dir: &str) -> LLMProvider {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../examples/{dir}/provider.yaml"));
        let text = std::fs::read_to_string(path).unwrap();
        serde_saphyr::from_str(&text).unwrap()
    }

    fn azure_example() -> LLMProvider {
        example("azure")
    }

    #[test]
    fn bedrock_providers_compile_with_their_region_and_model_ids() {
        let provider = example("bedrock");
        let compiled = compile_provider(&provider, &[]).unwrap();
        assert_eq!(compiled.api, ProviderApi::Bedrock);
        assert_eq!(compiled.aws_region.as_deref(), Some("us-east-1"));
        assert_eq!(
            compiled.models[1].upstream_name(),
            "us.anthropic.claude-sonnet-4-20250514-v1:0"
        );
        let mut no_region = example("bedrock");
        no_region.spec.aws = None;
        let message = compile_provider(&no_region, &[]).unwrap_err().message;
        assert!(
            message.contains("aws (with region) is required"),
            "{message}"
        );
        let mut arn = example("bedrock");
        arn.spec.models[0].name =
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-v2".into();
        let message = compile_provider(&arn, &[]).unwrap_err().message;
        assert!(
            message.contains("cannot be a Bedrock model id"),
            "{message}"
        );
        // Web identity: no keys, STS on an allowlisted host.
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/bedrock/provider-web-identity.yaml"),
        )
        .unwrap();
        let identity: LLMProvider = serde_saphyr::from_str(&text).unwrap();
        let compiled = compile_provider(&identity, &[]).unwrap();
        assert_eq!(compiled.credentials, None);
        let source = compiled.web_identity.unwrap();
        assert_eq!(source.sts_url, "https://sts.us-east-1.amazonaws.com");
        assert!(source.role_arn.ends_with("role/tollgate-bedrock-invoke"));
        let mut unlisted = identity.clone();
        unlisted.spec.hosts.retain(|h| !h.starts_with("sts."));
        let message = compile_provider(&unlisted, &[]).unwrap_err().message;
        assert!(message.contains("host is listed in hosts"), "{message}");
        for bad in [
            "https://sts.us-east-1.amazonaws.com:443@evil.test/",
            "https://sts.us-east-1.amazonaws.com/?x=1",
            "http://sts.us-east-1.amazonaws.com/",
            "https://[::1]/",
            "https://sts.us-east-1.amazonaws.com:x/",
        ] {
            let mut odd = identity.clone();
            odd.spec
                .aws
                .as_mut()
                .unwrap()
                .web_identity
                .as_mut()
                .unwrap()
                .sts_url = Some(bad.into());
            assert!(compile_provider(&odd, &[]).is_err(), "{bad}");
        }
        let mut china = identity.clone();
        china.spec.aws.as_mut().unwrap().region = "cn-north-1".into();
        china
            .spec
            .hosts
            .push("sts.cn-north-1.amazonaws.com.cn".into());
        assert_eq!(
            compile_provider(&china, &[])
                .unwrap()
                .web_identity
                .unwrap()
                .sts_url,
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        let mut both = identity.clone();
        both.spec.credentials_ref = provider.spec.credentials_ref.clone();
        let message = compile_provider(&both, &[]).unwrap_err().message;
        assert!(message.contains("exclusive"), "{message}");
        let mut elsewhere = example("gemini");
        elsewhere.spec.aws = provider.spec.aws.clone();
        let message = compile_provider(&elsewhere, &[]).unwrap_err().message;
        assert!(message.contains("allowed for no other api"), "{message}");
    }

    #[test]
    fn azure_providers_compile_their_entra_workload_identity() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/azure/provider-workload-identity.yaml"),
        )
        .unwrap();
        let provider: LLMProvider = serde_saphyr::from_str(&text).unwrap();
        let compiled = compile_provider(&provider, &[]).unwrap();
        assert_eq!(compiled.credentials, None);
        let source = compiled.entra_identity.unwrap();
        assert_eq!(
            source.token_url,
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token"
        );
        assert_eq!(source.client_id, "5b1a7b2e-3d4c-4f6a-9e8b-0c1d2e3f4a5b");
        assert_eq!(source.scope, "https://cognitiveservices.azure.com/.default");
        let mut government = provider.clone();
        government
            .spec
            .hosts
            .push("login.microsoftonline.us".into());
        let azure = government.spec.azure.as_mut().unwrap();
        azure.workload_identity.as_mut().unwrap().authority_host =
            Some("https://login.microsoftonline.us".into());
        let compiled = compile_provider(&government, &[]).unwrap();
        assert_eq!(
            compiled.entra_identity.unwrap().scope,
            "https://cognitiveservices.azure.us/.default"
        );
        let mut unlisted = provider.clone();
        unlisted
            .spec
            .hosts
            .retain(|h| h != "login.microsoftonline.com");
        let message = compile_provider(&unlisted, &[]).unwrap_err().message;
        assert!(message.contains("host is listed in hosts"), "{message}");
        for odd in [
            "https://login.microsoftonline.com/common",
            "https://login.microsoftonline.com?x=1",
            "http://login.microsoftonline.com",
        ] {
            let mut path = provider.clone();
            let azure = path.spec.azure.as_mut().unwrap();
            azure.workload_identity.as_mut().unwrap().authority_host = Some(odd.into());
            assert!(compile_provider(&path, &[]).is_err(), "{odd}");
        }
        let mut tenant = provider.clone();
        let azure = tenant.spec.azure.as_mut().unwrap();
        azure.workload_identity.as_mut().unwrap().tenant_id = "../x".into();
        assert!(compile_provider(&tenant, &[]).is_err());
        let mut short = provider.clone();
        let azure = short.spec.azure.as_mut().unwrap();
        azure.workload_identity.as_mut().unwrap().client_id = "abc-def".into();
        assert!(compile_provider(&short, &[]).is_err());
        let mut both = provider.clone();
        both.spec.credentials_ref = azure_example().spec.credentials_ref;
        let message = compile_provider(&both, &[]).unwrap_err().message;
        assert!(message.contains("exclusive"), "{message}");
    }

    #[test]
    fn vertex_providers_compile_their_target_and_workload_identity() {
        let provider = example("vertex");
        let compiled = compile_provider(&provider, &[]).unwrap();
        assert_eq!(compiled.api, ProviderApi::Vertex);
        assert_eq!(compiled.credentials, None);
        assert_eq!(
            compiled.vertex,
            Some(VertexTarget {
                project: "my-ml-project".into(),
                location: "us-central1".into(),
            })
        );
        let source = compiled.google_identity.unwrap();
        assert_eq!(source.sts_url, "https://sts.googleapis.com/v1/token");
        assert_eq!(
            source.impersonation_url.as_deref(),
            Some(
                "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/vertex-caller@my-ml-project.iam.gserviceaccount.com:generateAccessToken"
            )
        );
        assert!(source.audience.ends_with("/providers/cluster-1"));
        // Without a service account the federated token is used as it is.
        let mut direct = provider.clone();
        let identity = direct.spec.gcp.as_mut().unwrap();
        identity.workload_identity.as_mut().unwrap().service_account = None;
        let compiled = compile_provider(&direct, &[]).unwrap();
        assert_eq!(compiled.google_identity.unwrap().impersonation_url, None);
        // Every token service must be an allowlisted host.
        for host in ["sts.googleapis.com", "iamcredentials.googleapis.com"] {
            let mut unlisted = provider.clone();
            unlisted.spec.hosts.retain(|h| h != host);
            let message = compile_provider(&unlisted, &[]).unwrap_err().message;
            assert!(message.contains("host is listed in hosts"), "{message}");
        }
        let mut odd = provider.clone();
        let identity = odd.spec.gcp.as_mut().unwrap();
        identity.workload_identity.as_mut().unwrap().sts_url =
            Some("https://sts.googleapis.com/v1/token?x=1".into());
        assert!(compile_provider(&odd, &[]).is_err());
        for (audience, account) in [
            (
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q?x",
                "a@b.iam.gserviceaccount.com",
            ),
            (
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q",
                "a/../b@c.iam.gserviceaccount.com",
            ),
            (
                "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q",
                "a@b.iam.gserviceaccount.com?x",
            ),
        ] {
            let mut odd = provider.clone();
            let identity = odd
                .spec
                .gcp
                .as_mut()
                .unwrap()
                .workload_identity
                .as_mut()
                .unwrap();
            identity.audience = audience.into();
            identity.service_account = Some(account.into());
            assert!(compile_provider(&odd, &[]).is_err(), "{audience} {account}");
        }
        let mut both = provider.clone();
        both.spec.credentials_ref = example("gemini").spec.credentials_ref;
        let message = compile_provider(&both, &[]).unwrap_err().message;
        assert!(message.contains("exclusive"), "{message}");
        let mut path = provider.clone();
        path.spec.gcp.as_mut().unwrap().project = "a/../b".into();
        let message = compile_provider(&path, &[]).unwrap_err().message;
        assert!(message.contains("project"), "{message}");
        let mut no_gcp = provider.clone();
        no_gcp.spec.gcp = None;
        let message = compile_provider(&no_gcp, &[]).unwrap_err().message;
        assert!(message.contains("gcp (with project"), "{message}");
        let mut elsewhere = example("gemini");
        elsewhere.spec.gcp = provider.spec.gcp.clone();
        let message = compile_provider(&elsewhere, &[]).unwrap_err().message;
        assert!(message.contains("allowed for no other api"), "{message}");
        // A stored Vertex API key works too.
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/vertex/provider-api-key.yaml"),
        )
        .unwrap();
        let keyed: LLMProvider = serde_saphyr::from_str(&text).unwrap();
        let compiled = compile_provider(&keyed, &[]).unwrap();
        assert!(compiled.credentials.is_some() && compiled.google_identity.is_none());
    }

    #[test]
    fn gemini_providers_compile_and_refuse_models_that_cannot_be_a_path() {
        let provider = example("gemini");
        let compiled = compile_provider(&provider, &[]).unwrap();
        assert_eq!(compiled.api, ProviderApi::Gemini);
        assert_eq!(compiled.models[0].upstream_name(), "gemini-2.5-flash");
        for bad in ["models/gemini-2.5-flash", "gemini:flash", "a b", ""] {
            let mut p = example("gemini");
            p.spec.models[0].name = bad.into();
            let message = compile_provider(&p, &[]).unwrap_err().message;
            assert!(
                message.contains("cannot be a Gemini model in a path"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn azure_providers_compile_their_deployments_and_refuse_what_cannot_be_one() {
        let provider = azure_example();
        let compiled = compile_provider(&provider, &[]).unwrap();
        assert_eq!(compiled.azure_api_version.as_deref(), Some("2024-10-21"));
        assert_eq!(compiled.models[0].upstream_name(), "gpt-4o-prod");
        assert_eq!(compiled.models[1].upstream_name(), "text-embedding-3-small");

        let refused = |edit: &dyn Fn(&mut LLMProvider)| {
            let mut p = azure_example();
            edit(&mut p);
            compile_provider(&p, &[]).unwrap_err().message
        };
        assert!(refused(&|p| p.spec.azure = None).contains("azure (with apiVersion) is required"));
        assert!(
            refused(&|p| p.spec.models[1].name = "text embedding".into())
                .contains("cannot be an Azure deployment name")
        );
        assert!(
            refused(&|p| p.spec.models[0].deployment = Some("x/../../y".into()))
                .contains("cannot be an Azure deployment name")
        );
        assert!(
            refused(&|p| p.spec.models[0].deployment = Some("text-embedding-3-small".into()))
                .contains("is another model's name or alias")
        );
        let not_azure = refused(&|p| p.spec.api = ProviderApi::Openai);
        assert!(not_azure.contains("azure (with apiVersion)"), "{not_azure}");
        let not_azure = refused(&|p| {
            p.spec.api = ProviderApi::Openai;
            p.spec.azure = None;
        });
        assert!(
            not_azure.contains("deployment applies to api azureOpenai only"),
            "{not_azure}"
        );
    }

    #[test]
    fn rolling_durations_parse_to_seconds() {
        assert_eq!(parse_rolling("90m"), Some(5400));
        assert_eq!(parse_rolling("1h30m"), Some(5400));
        assert_eq!(parse_rolling("45s"), Some(45));
        assert_eq!(parse_rolling("0m"), None);
        assert_eq!(parse_rolling("10"), None);
        assert_eq!(parse_rolling("h"), None);
        assert_eq!(parse_rolling("99999999999999999999h"), None);
    }
}
