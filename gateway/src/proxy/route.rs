//! Routing: which providers and models a request may go to under the pod's
//! policy, and what the policy's token caps make of the request. Pure.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;
use tollgate_wire::config::{
    CompiledModel, CompiledPolicy, CompiledProvider, GatewayConfig, ProviderApi, glob_matches,
};

use super::Runtime;
use crate::api::Endpoint;

/// A provider and model a request may go to.
#[derive(Debug, Clone)]
pub(super) struct Candidate<'a> {
    pub provider: &'a CompiledProvider,
    pub model: &'a CompiledModel,
    pub max_tokens: Option<u32>,
}

/// The candidates for `requested` under `policy`, in policy order. A
/// `provider:model` prefix forces one provider. Only providers that serve the
/// endpoint's style, and models the provider lists, qualify.
pub(super) fn candidates<'a>(
    config: &'a GatewayConfig,
    policy: &'a CompiledPolicy,
    endpoint: Endpoint,
    requested: &str,
    check_globs: bool,
) -> Vec<Candidate<'a>> {
    let (forced, model_name) = match requested.split_once(':') {
        Some((p, m)) if config.provider(p).is_some() => (Some(p), m),
        _ => (None, requested),
    };
    let mut out: Vec<Candidate<'a>> = Vec::new();
    for route in &policy.routes {
        if forced.is_some_and(|p| p != route.provider) {
            continue;
        }
        let Some(provider) = config.provider(&route.provider) else {
            continue;
        };
        if !endpoint.served_by(provider.api) || out.iter().any(|c| c.provider.name == provider.name)
        {
            continue;
        }
        let Some(model) = provider.models.iter().find(|m| {
            m.name == model_name
                || m.aliases.iter().any(|a| a == model_name)
                || m.deployment.as_deref() == Some(model_name)
        }) else {
            continue;
        };
        let allowed = !check_globs
            || route
                .model_globs
                .iter()
                .any(|g| glob_matches(g, &model.name) || glob_matches(g, model_name));
        if allowed {
            out.push(Candidate {
                provider,
                model,
                max_tokens: route.max_tokens,
            });
        }
    }
    // A live route never falls back to dry-run, nor the reverse.
    if let Some(first_lane) = out.first().map(|c| c.provider.api == ProviderApi::DryRun) {
        out.retain(|c| (c.provider.api == ProviderApi::DryRun) == first_lane);
    }
    out
}

/// The field that caps output tokens for an endpoint: top level, or inside
/// Gemini's `generationConfig` or Bedrock Converse's `inferenceConfig`.
/// (`InvokeModel` bodies are the model's own; for Claude, `max_tokens`.)
fn max_tokens_field(endpoint: Endpoint) -> Option<(Option<&'static str>, &'static str)> {
    match endpoint {
        Endpoint::ChatCompletions
        | Endpoint::Completions
        | Endpoint::Messages
        | Endpoint::InvokeModel
        | Endpoint::InvokeModelStream => Some((None, "max_tokens")),
        Endpoint::Converse | Endpoint::ConverseStream => {
            Some((Some("inferenceConfig"), "maxTokens"))
        }
        Endpoint::Responses => Some((None, "max_output_tokens")),
        Endpoint::GenerateContent | Endpoint::StreamGenerateContent => {
            Some((Some("generationConfig"), "maxOutputTokens"))
        }
        _ => None,
    }
}

pub(super) fn requested_max_tokens(endpoint: Endpoint, body: &Value) -> Option<u64> {
    let (parent, field) = max_tokens_field(endpoint)?;
    let holder = match parent {
        Some(parent) => body.get(parent)?,
        None => body,
    };
    holder.get(field).and_then(Value::as_u64).or_else(|| {
        parent
            .is_none()
            .then(|| body.get("max_completion_tokens").and_then(Value::as_u64))
            .flatten()
    })
}

/// Sets the policy's cap as the request's output-token limit; false when the
/// endpoint has none or the field's parent is not an object (the provider
/// then refuses the request itself).
pub(super) fn set_max_tokens(endpoint: Endpoint, body: &mut Value, cap: u32) -> bool {
    let Some((parent, field)) = max_tokens_field(endpoint) else {
        return false;
    };
    let holder = match parent {
        None => body.as_object_mut(),
        Some(parent) => {
            let Some(object) = body.as_object_mut() else {
                return false;
            };
            object
                .entry(parent)
                .or_insert_with(|| Value::Object(serde_json::Map::new()))
                .as_object_mut()
        }
    };
    match holder {
        Some(holder) => {
            holder.insert(field.to_owned(), Value::from(cap));
            true
        }
        None => false,
    }
}

/// A Gemini body that names a model (a batch's requests, a count's
/// `generateContentRequest`, any top-level `model`) must name its path's, as
/// `models/{model}`, Vertex AI's `[projects/{p}/locations/{l}/]publishers/google/models/{model}`
/// or `{model}` (with or without the path's `provider:` prefix): the path's
/// model is the one routed, quota'd and allowed, so no other may ride along
/// in the body.
pub(super) fn check_gemini_body_models(
    endpoint: Endpoint,
    path_model: &str,
    body: &Value,
) -> Result<(), super::Refusal> {
    // `provider:model` in the path; the body may name either.
    let bare = path_model.split_once(':').map(|(_, model)| model);
    let agrees = |named: Option<&Value>| match named {
        None => true,
        Some(Value::String(name)) => {
            let name = body_model_name(name);
            name == path_model || Some(name) == bare
        }
        Some(_) => false,
    };
    let mut named = vec![body.get("model")];
    if let Some(inner) = body.get("generateContentRequest") {
        named.push(inner.get("model"));
    }
    if endpoint == Endpoint::BatchEmbedContents
        && let Some(requests) = body.get("requests").and_then(Value::as_array)
    {
        named.extend(requests.iter().map(|r| r.get("model")));
    }
    if named.into_iter().all(agrees) {
        Ok(())
    } else {
        Err(super::Refusal::ModelMismatch {
            path_model: path_model.to_owned(),
        })
    }
}

/// The model a Gemini or Vertex AI body's model name names: `models/{m}`,
/// `publishers/google/models/{m}` (after any `projects/{p}/locations/{l}/`)
/// or `{m}`. Any other resource name is kept whole, so it matches no path
/// model.
fn body_model_name(name: &str) -> &str {
    if let Some(model) = name.strip_prefix("models/") {
        return model;
    }
    let vertex = match name.split_once("/publishers/google/models/") {
        Some((scope, model)) => {
            let mut parts = scope.split('/');
            let scoped = matches!(
                (
                    parts.next(),
                    parts.next(),
                    parts.next(),
                    parts.next(),
                    parts.next()
                ),
                (Some("projects"), Some(_), Some("locations"), Some(_), None)
            );
            scoped.then_some(model)
        }
        None => name.strip_prefix("publishers/google/models/"),
    };
    vertex.unwrap_or(name)
}

/// Refuses bodies whose shape the gateway would not check or meter:
/// Bedrock `InvokeModel` for anything but Claude (whose body, with
/// `anthropic_version`, carries `max_tokens` and Anthropic's usage),
/// Bedrock `CountTokens` of anything but a Converse input (an `invokeModel`
/// input is an opaque base64 blob the guards cannot read), and
/// Gemini bodies that use the snake_case aliases Google also accepts for
/// the fields the gateway checks (`generation_config`,
/// `generate_content_request`), which would slip past the token cap and the
/// model check.
pub(super) fn check_body_shape(endpoint: Endpoint, body: &Value) -> Result<(), super::Refusal> {
    let detail = match endpoint {
        Endpoint::InvokeModel | Endpoint::InvokeModelStream
            if !body.get("anthropic_version").is_some_and(Value::is_string) =>
        {
            "InvokeModel is served for Anthropic Claude bodies (with anthropic_version) only; use Converse for other models"
        }
        Endpoint::BedrockCountTokens
            if !body
                .pointer("/input/converse")
                .is_some_and(Value::is_object)
                || body.pointer("/input/invokeModel").is_some() =>
        {
            "CountTokens is served for a Converse input (input.converse) only"
        }
        Endpoint::GenerateContent
        | Endpoint::StreamGenerateContent
        | Endpoint::GeminiCountTokens
            if body.get("generation_config").is_some()
                || body.get("generate_content_request").is_some()
                || body
                    .pointer("/generationConfig/max_output_tokens")
                    .is_some() =>
        {
            "spell generationConfig, maxOutputTokens and generateContentRequest in camelCase, as the Gemini SDKs do"
        }
        _ => return Ok(()),
    };
    Err(super::Refusal::UnsupportedBody { detail })
}

/// A Gemini API `countTokens` body that wraps a `generateContentRequest`,
/// unwrapped for Vertex AI, whose `countTokens` takes the fields it counts
/// (`contents`, `systemInstruction`, `tools`, `generationConfig`) at the top
/// level and has no wrapper; true when anything changed.
pub(super) fn unwrap_count_request_for_vertex(body: &mut Value) -> bool {
    let Some(Value::Object(inner)) = body
        .as_object_mut()
        .and_then(|b| b.remove("generateContentRequest"))
    else {
        return false;
    };
    for field in ["contents", "systemInstruction", "tools", "generationConfig"] {
        if let Some(value) = inner.get(field) {
            body[field] = value.clone();
        }
    }
    true
}

/// The upstream model names a Gemini body carries, rewritten to `wanted`
/// (`models/{model}` for the Gemini API, the full resource name for Vertex
/// AI); true when anything changed.
pub(super) fn rewrite_gemini_body_models(body: &mut Value, wanted: &str) -> bool {
    let mut changed = false;
    let mut set = |holder: &mut Value| {
        if let Some(name) = holder.get_mut("model")
            && name.as_str() != Some(wanted)
        {
            *name = Value::from(wanted);
            changed = true;
        }
    };
    set(body);
    if let Some(inner) = body.get_mut("generateContentRequest") {
        set(inner);
    }
    if let Some(requests) = body.get_mut("requests").and_then(Value::as_array_mut) {
        requests.iter_mut().for_each(&mut set);
    }
    changed
}

/// Output tokens assumed for a quota estimate when neither the request nor
/// the policy bounds them.
pub(super) const DEFAULT_OUTPUT_ESTIMATE: u64 = 1024;

/// The `GET /v1/models` answer: the models the policy allows, in the style
/// the client speaks (Anthropic when it sends `anthropic-version`).
pub(super) fn list_models(runtime: &Runtime, headers: &HeaderMap) -> Bytes {
    let mut names: Vec<(String, &str)> = Vec::new();
    if let Some(policy) = &runtime.policy {
        for route in &policy.routes {
            let Some(provider) = runtime.config.provider(&route.provider) else {
                continue;
            };
            for model in &provider.models {
                let allowed = route
                    .model_globs
                    .iter()
                    .any(|g| glob_matches(g, &model.name));
                if allowed && !names.iter().any(|(n, _)| n == &model.name) {
                    names.push((model.name.clone(), provider.name.as_str()));
                }
            }
        }
    }
    let body = if headers.contains_key("anthropic-version") {
        let data: Vec<Value> = names.iter().map(|(n, _)| serde_json::json!({"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"})).collect();
        serde_json::json!({"data": data, "has_more": false, "first_id": names.first().map(|n| &n.0), "last_id": names.last().map(|n| &n.0)})
    } else {
        let data: Vec<Value> = names.iter().map(|(n, p)| serde_json::json!({"id": n, "object": "model", "created": 0, "owned_by": p})).collect();
        serde_json::json!({"object": "list", "data": data})
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_the_gateway_would_not_check_are_refused() {
        let claude =
            serde_json::json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5});
        assert!(check_body_shape(Endpoint::InvokeModel, &claude).is_ok());
        let titan =
            serde_json::json!({"inputText": "hi", "textGenerationConfig": {"maxTokenCount": 9}});
        for endpoint in [Endpoint::InvokeModel, Endpoint::InvokeModelStream] {
            assert!(matches!(
                check_body_shape(endpoint, &titan),
                Err(super::super::Refusal::UnsupportedBody { .. })
            ));
        }
        let snake =
            serde_json::json!({"contents": [], "generation_config": {"max_output_tokens": 9}});
        assert!(check_body_shape(Endpoint::GenerateContent, &snake).is_err());
        let wrapped = serde_json::json!({"generate_content_request": {"model": "models/other"}});
        assert!(check_body_shape(Endpoint::GeminiCountTokens, &wrapped).is_err());
        let mixed =
            serde_json::json!({"contents": [], "generationConfig": {"max_output_tokens": 9}});
        assert!(check_body_shape(Endpoint::StreamGenerateContent, &mixed).is_err());
        let camel = serde_json::json!({"contents": [], "generationConfig": {"maxOutputTokens": 9}});
        assert!(check_body_shape(Endpoint::GenerateContent, &camel).is_ok());
        assert!(check_body_shape(Endpoint::Converse, &titan).is_ok());
        let converse = serde_json::json!({"input": {"converse": {"messages": []}}});
        assert!(check_body_shape(Endpoint::BedrockCountTokens, &converse).is_ok());
        let blob = serde_json::json!({"input": {"invokeModel": {"body": "eyJwcm9tcHQiOiJoaSJ9"}}});
        assert!(check_body_shape(Endpoint::BedrockCountTokens, &blob).is_err());
        let both = serde_json::json!({"input": {"converse": {}, "invokeModel": {"body": "e30="}}});
        assert!(check_body_shape(Endpoint::BedrockCountTokens, &both).is_err());
    }

    #[test]
    fn a_wrapped_count_is_unwrapped_for_vertex() {
        let mut body = serde_json::json!({"generateContentRequest": {
            "model": "models/g", "contents": [{"parts": [{"text": "hi"}]}],
            "safetySettings": [], "generationConfig": {"maxOutputTokens": 5}}});
        assert!(unwrap_count_request_for_vertex(&mut body));
        assert_eq!(
            body,
            serde_json::json!({"contents": [{"parts": [{"text": "hi"}]}],
                               "generationConfig": {"maxOutputTokens": 5}})
        );
        assert!(!unwrap_count_request_for_vertex(&mut body));
    }

    #[test]
    fn body_models_may_be_named_as_either_api_names_them() {
        for name in [
            "gemini-2.5-flash",
            "models/gemini-2.5-flash",
            "publishers/google/models/gemini-2.5-flash",
            "projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash",
        ] {
            assert_eq!(body_model_name(name), "gemini-2.5-flash", "{name}");
        }
        for kept in [
            "publishers/anthropic/models/claude",
            "projects/p/publishers/google/models/x",
            "a/projects/p/locations/l/publishers/google/models/x",
        ] {
            assert_eq!(body_model_name(kept), kept);
        }
        let body = serde_json::json!({"model": "publishers/google/models/other"});
        assert!(
            check_gemini_body_models(Endpoint::GenerateContent, "gemini-2.5-flash", &body).is_err()
        );
        let body =
            serde_json::json!({"model": "projects/p/locations/l/publishers/google/models/g"});
        assert!(check_gemini_body_models(Endpoint::GenerateContent, "g", &body).is_ok());
    }

    use super::*;
    use tollgate_wire::config::{PriceTable, Route};

    fn model(name: &str, aliases: &[&str]) -> CompiledModel {
        CompiledModel {
            deployment: None,
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            pricing: PriceTable::default(),
        }
    }

    fn provider(name: &str, api: ProviderApi, models: Vec<CompiledModel>) -> CompiledProvider {
        CompiledProvider {
            azure_api_version: None,
            aws_region: None,
            web_identity: None,
            vertex: None,
            google_identity: None,
            entra_identity: None,
            name: name.into(),
            api,
            base_url: None,
            hosts: vec![],
            credentials: None,
            models,
            upstream_trust: vec![],
            connect_timeout_ms: 1,
            first_byte_timeout_ms: 1,
            idle_timeout_ms: 1,
        }
    }

    fn config() -> (GatewayConfig, CompiledPolicy) {
        let policy = CompiledPolicy {
            name: "p".into(),
            pod_selector: Default::default(),
            mode: tollgate_wire::config::PolicyMode::Enforce,
            routes: vec![
                Route {
                    provider: "openai".into(),
                    model_globs: vec!["gpt-4o*".into()],
                    max_tokens: Some(100),
                },
                Route {
                    provider: "backup".into(),
                    model_globs: vec!["*".into()],
                    max_tokens: None,
                },
                Route {
                    provider: "dry".into(),
                    model_globs: vec!["*".into()],
                    max_tokens: None,
                },
                Route {
                    provider: "claude".into(),
                    model_globs: vec!["claude-*".into()],
                    max_tokens: None,
                },
            ],
            failover: true,
            max_request_bytes: 1024,
            block_secrets: true,
            header_allowlist: vec![],
            fail_mode: tollgate_wire::config::FailMode::Closed,
            allow_opt_out: false,
            egress: vec![],
        };
        let config = GatewayConfig {
            version: 1,
            namespace: "ns".into(),
            policy_hash: String::new(),
            policies: vec![policy.clone()],
            providers: vec![
                provider(
                    "openai",
                    ProviderApi::Openai,
                    vec![model("gpt-4o-mini", &["mini"])],
                ),
                provider(
                    "backup",
                    ProviderApi::Openai,
                    vec![model("gpt-4o-mini", &[])],
                ),
                provider(
                    "dry",
                    ProviderApi::DryRun,
                    vec![model("gpt-4o-mini", &[]), model("dry-only", &[])],
                ),
                provider(
                    "claude",
                    ProviderApi::Anthropic,
                    vec![model("claude-3-5-haiku", &[])],
                ),
            ],
            quotas: vec![],
        };
        (config, policy)
    }

    fn names(c: &[Candidate<'_>]) -> Vec<String> {
        c.iter()
            .map(|c| format!("{}:{}", c.provider.name, c.model.name))
            .collect()
    }

    #[test]
    fn routes_follow_policy_order_and_never_mix_lanes() {
        let (config, policy) = config();
        let c = candidates(
            &config,
            &policy,
            Endpoint::ChatCompletions,
            "gpt-4o-mini",
            true,
        );
        assert_eq!(
            names(&c),
            ["openai:gpt-4o-mini", "backup:gpt-4o-mini"],
            "dry-run is never a fallback for a live route"
        );
        let c = candidates(&config, &policy, Endpoint::ChatCompletions, "mini", true);
        assert_eq!(
            names(&c),
            ["openai:gpt-4o-mini"],
            "aliases resolve to the provider's name"
        );
        let c = candidates(
            &config,
            &policy,
            Endpoint::ChatCompletions,
            "dry-only",
            true,
        );
        assert_eq!(names(&c), ["dry:dry-only"]);
    }

    #[test]
    fn provider_prefix_forces_a_provider() {
        let (config, policy) = config();
        assert_eq!(
            names(&candidates(
                &config,
                &policy,
                Endpoint::ChatCompletions,
                "backup:gpt-4o-mini",
                true
            )),
            ["backup:gpt-4o-mini"]
        );
        assert_eq!(
            names(&candidates(
                &config,
                &policy,
                Endpoint::ChatCompletions,
                "dry:gpt-4o-mini",
                true
            )),
            ["dry:gpt-4o-mini"]
        );
        assert!(
            candidates(
                &config,
                &policy,
                Endpoint::ChatCompletions,
                "nobody:gpt-4o-mini",
                true
            )
            .is_empty()
        );
    }

    #[test]
    fn styles_and_unknown_models_are_enforced() {
        let (config, policy) = config();
        assert!(
            candidates(
                &config,
                &policy,
                Endpoint::ChatCompletions,
                "claude-3-5-haiku",
                true
            )
            .is_empty(),
            "an Anthropic model over the OpenAI API"
        );
        assert_eq!(
            names(&candidates(
                &config,
                &policy,
                Endpoint::Messages,
                "claude-3-5-haiku",
                true
            )),
            ["claude:claude-3-5-haiku"]
        );
        assert!(
            candidates(&config, &policy, Endpoint::ChatCompletions, "gpt-5", true).is_empty(),
            "not listed by any provider"
        );
    }
}
