//! The API surfaces the gateway serves: which paths exist, which API style
//! each belongs to, and which provider APIs may serve it. Any other path is
//! refused, never passed through.

use tollgate_wire::config::{
    ProviderApi, VertexTarget, is_bedrock_model_id, is_deployment_name, is_gemini_model_name,
    is_vertex_path_name,
};

/// The wire style a client speaks; errors are answered in the same style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiStyle {
    OpenAi,
    Anthropic,
    Gemini,
    Bedrock,
}

/// Every endpoint the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/responses`
    Responses,
    /// `GET /v1/models`
    Models,
    /// `POST /v1/messages`
    Messages,
    /// `POST /v1/messages/count_tokens`
    CountTokens,
    /// Gemini `POST /{version}/models/{model}:generateContent`
    GenerateContent,
    /// Gemini `POST /{version}/models/{model}:streamGenerateContent?alt=sse`
    StreamGenerateContent,
    /// Gemini `POST /{version}/models/{model}:countTokens`
    GeminiCountTokens,
    /// Gemini `POST /{version}/models/{model}:embedContent`
    EmbedContent,
    /// Gemini `POST /{version}/models/{model}:batchEmbedContents`
    BatchEmbedContents,
    /// Bedrock `POST /model/{modelId}/converse`
    Converse,
    /// Bedrock `POST /model/{modelId}/converse-stream` (event stream)
    ConverseStream,
    /// Bedrock `POST /model/{modelId}/invoke` (the model's own body; Anthropic
    /// Messages for Claude)
    InvokeModel,
    /// Bedrock `POST /model/{modelId}/invoke-with-response-stream`
    InvokeModelStream,
    /// Bedrock `POST /model/{modelId}/count-tokens` (a Converse input)
    BedrockCountTokens,
}

/// The Gemini API versions served, as the path names them.
const GEMINI_VERSIONS: [&str; 2] = ["v1beta", "v1"];
/// The Vertex AI versions served, as the path names them.
const VERTEX_VERSIONS: [&str; 2] = ["v1beta1", "v1"];

/// A Gemini API or Vertex AI path's model and API version (as that path
/// names it; the other API's path maps a beta to its beta).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeminiTarget<'p> {
    pub model: &'p str,
    pub version: &'static str,
}

impl Endpoint {
    /// The endpoint for a method and path, if the gateway serves it. Query
    /// strings are not part of `path`.
    pub fn from_request(method: &http::Method, path: &str) -> Option<Self> {
        let endpoint = match path.trim_end_matches('/') {
            "/v1/chat/completions" => Self::ChatCompletions,
            "/v1/completions" => Self::Completions,
            "/v1/embeddings" => Self::Embeddings,
            "/v1/responses" => Self::Responses,
            "/v1/models" => Self::Models,
            "/v1/messages" => Self::Messages,
            "/v1/messages/count_tokens" => Self::CountTokens,
            _ => return None,
        };
        let expected = if endpoint == Self::Models {
            http::Method::GET
        } else {
            http::Method::POST
        };
        (method == expected).then_some(endpoint)
    }

    /// An Azure OpenAI path, as the Azure SDKs send it: the endpoint and the
    /// deployment the path names (the model asked for), if it names one.
    /// `/openai/deployments/{deployment}/chat/completions`, `/completions`
    /// and `/embeddings`; `/openai/v1/` plus any OpenAI path. The query
    /// (`api-version`) is the client's and is not forwarded.
    pub fn from_azure_path<'p>(
        method: &http::Method,
        path: &'p str,
    ) -> Option<(Self, Option<&'p str>)> {
        let path = path.trim_end_matches('/');
        if let Some(rest) = path.strip_prefix("/openai/v1/") {
            return Self::from_request(method, &format!("/v1/{rest}")).map(|e| (e, None));
        }
        let rest = path.strip_prefix("/openai/deployments/")?;
        let (deployment, operation) = rest.split_once('/')?;
        let valid = is_deployment_name(deployment);
        let endpoint = match operation {
            "chat/completions" => Self::ChatCompletions,
            "completions" => Self::Completions,
            "embeddings" => Self::Embeddings,
            _ => return None,
        };
        (valid && method == http::Method::POST).then_some((endpoint, Some(deployment)))
    }

    /// A Gemini API path, as the Google Gen AI SDKs send it:
    /// `/{v1beta|v1}/models/{model}:{method}`, with the model it names (which
    /// may carry a `provider:` prefix; the method follows the last colon).
    /// `query` is the client's query string: a stream must ask for
    /// `alt=sse`, the only stream framing served. The query is otherwise the
    /// client's and is not forwarded (an API key in it never leaves).
    pub fn from_gemini_path<'p>(
        method: &http::Method,
        path: &'p str,
        query: Option<&str>,
    ) -> Option<(Self, GeminiTarget<'p>)> {
        let (version, rest) = path.strip_prefix('/')?.split_once('/')?;
        let version = GEMINI_VERSIONS.into_iter().find(|v| *v == version)?;
        let (endpoint, model) = Self::gemini_operation(rest.strip_prefix("models/")?, query)?;
        (method == http::Method::POST).then_some((endpoint, GeminiTarget { model, version }))
    }

    /// A Vertex AI path, as the Google Gen AI SDKs send it in Vertex mode:
    /// `/{v1|v1beta1}/projects/{project}/locations/{location}/publishers/google/models/{model}:{method}`,
    /// for the same methods as [`Self::from_gemini_path`]. The project and
    /// location are the client's and are not forwarded (the provider's are
    /// used); only Google's own models (`publishers/google`) are served.
    pub fn from_vertex_path<'p>(
        method: &http::Method,
        path: &'p str,
        query: Option<&str>,
    ) -> Option<(Self, GeminiTarget<'p>)> {
        let (version, rest) = path.strip_prefix('/')?.split_once('/')?;
        let version = VERTEX_VERSIONS.into_iter().find(|v| *v == version)?;
        let rest = rest.strip_prefix("projects/")?;
        let (project, rest) = rest.split_once("/locations/")?;
        let (location, rest) = rest.split_once("/publishers/google/models/")?;
        if !(is_vertex_path_name(project) && is_vertex_path_name(location)) {
            return None;
        }
        let (endpoint, model) = Self::gemini_operation(rest, query)?;
        (method == http::Method::POST).then_some((endpoint, GeminiTarget { model, version }))
    }

    /// The endpoint and model of `{model}:{method}`, the end of a Gemini API
    /// or Vertex AI path. The model may carry a `provider:` prefix (the
    /// method follows the last colon); a stream must ask for `alt=sse`.
    fn gemini_operation<'p>(rest: &'p str, query: Option<&str>) -> Option<(Self, &'p str)> {
        let (model, operation) = rest.rsplit_once(':')?;
        let endpoint = match operation {
            "generateContent" => Self::GenerateContent,
            "streamGenerateContent" => Self::StreamGenerateContent,
            "countTokens" => Self::GeminiCountTokens,
            "embedContent" => Self::EmbedContent,
            "batchEmbedContents" => Self::BatchEmbedContents,
            _ => return None,
        };
        let sse = query.unwrap_or("").split('&').any(|pair| pair == "alt=sse");
        let model_ok = model
            .split_once(':')
            .map_or(is_gemini_model_name(model), |(provider, name)| {
                is_gemini_model_name(provider) && is_gemini_model_name(name)
            });
        let framing_ok = endpoint != Self::StreamGenerateContent || sse;
        (model_ok && framing_ok).then_some((endpoint, model))
    }

    /// The path of this Gemini endpoint for `model` at `version` upstream
    /// (a stream asks for SSE). `None` for what is no Gemini endpoint or a
    /// name that cannot be a path segment.
    pub fn gemini_path(self, model: &str, version: &str) -> Option<String> {
        let operation = self.gemini_method()?;
        let version = match version {
            "v1beta" | "v1beta1" => "v1beta",
            "v1" => "v1",
            _ => return None,
        };
        is_gemini_model_name(model).then(|| format!("/{version}/models/{model}:{operation}"))
    }

    /// The path of this Gemini endpoint on Vertex AI for `model` in the
    /// provider's project and location, at `version` (a Gemini API beta
    /// maps to Vertex's `v1beta1`). `None` for what is no Gemini endpoint
    /// or a name that cannot be a path segment.
    pub fn vertex_path(self, target: &VertexTarget, model: &str, version: &str) -> Option<String> {
        let operation = self.gemini_method()?;
        let version = match version {
            "v1beta" | "v1beta1" => "v1beta1",
            "v1" => "v1",
            _ => return None,
        };
        let VertexTarget { project, location } = target;
        (is_gemini_model_name(model)
            && is_vertex_path_name(project)
            && is_vertex_path_name(location))
        .then(|| {
            format!(
                "/{version}/projects/{project}/locations/{location}/publishers/google/models/{model}:{operation}"
            )
        })
    }

    /// The method a Gemini endpoint's path ends with (a stream asks for SSE).
    fn gemini_method(self) -> Option<&'static str> {
        Some(match self {
            Self::GenerateContent => "generateContent",
            Self::StreamGenerateContent => "streamGenerateContent?alt=sse",
            Self::GeminiCountTokens => "countTokens",
            Self::EmbedContent => "embedContent",
            Self::BatchEmbedContents => "batchEmbedContents",
            _ => return None,
        })
    }

    /// A Bedrock runtime path, as the AWS SDKs send it:
    /// `/model/{modelId}/{operation}` with the model id percent-encoded (its
    /// `:` as `%3A`). The decoded id is returned; only ids of
    /// `[A-Za-z0-9._:-]` are served (no ARNs).
    pub fn from_bedrock_path(method: &http::Method, path: &str) -> Option<(Self, String)> {
        let rest = path.strip_prefix("/model/")?;
        let (encoded, operation) = rest.split_once('/')?;
        let endpoint = match operation {
            "converse" => Self::Converse,
            "converse-stream" => Self::ConverseStream,
            "invoke" => Self::InvokeModel,
            "invoke-with-response-stream" => Self::InvokeModelStream,
            "count-tokens" => Self::BedrockCountTokens,
            _ => return None,
        };
        let model = decode_model_id(encoded)?;
        (is_bedrock_model_id(&model) && method == http::Method::POST).then_some((endpoint, model))
    }

    /// The path of this Bedrock endpoint for `model` upstream, its id
    /// percent-encoded as the AWS SDKs do. `None` for what is no Bedrock
    /// endpoint or no model id.
    pub fn bedrock_path(self, model: &str) -> Option<String> {
        let operation = match self {
            Self::Converse => "converse",
            Self::ConverseStream => "converse-stream",
            Self::InvokeModel => "invoke",
            Self::InvokeModelStream => "invoke-with-response-stream",
            Self::BedrockCountTokens => "count-tokens",
            _ => return None,
        };
        is_bedrock_model_id(model)
            .then(|| format!("/model/{}/{operation}", model.replace(':', "%3A")))
    }

    /// Whether the endpoint only counts tokens (one request, no tokens,
    /// against quotas).
    pub fn counts_tokens(self) -> bool {
        matches!(
            self,
            Self::CountTokens | Self::GeminiCountTokens | Self::BedrockCountTokens
        )
    }

    /// Whether the endpoint embeds (its answer has no output tokens).
    pub fn embeds(self) -> bool {
        matches!(
            self,
            Self::Embeddings | Self::EmbedContent | Self::BatchEmbedContents
        )
    }

    /// Whether the answer is a stream whatever the body says.
    pub fn always_streams(self) -> bool {
        matches!(
            self,
            Self::StreamGenerateContent | Self::ConverseStream | Self::InvokeModelStream
        )
    }

    /// The path of this endpoint on an Azure OpenAI resource for
    /// `deployment` at `api_version` (`v1`: the version-less paths, where the
    /// body names the deployment). `None` for what Azure does not serve at a
    /// deployment path.
    pub fn azure_path(self, deployment: &str, api_version: &str) -> Option<String> {
        let version_ok = api_version == "v1"
            || api_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !is_deployment_name(deployment) || !version_ok {
            return None;
        }
        if api_version == "v1" {
            return Some(format!("/openai{}", self.path()));
        }
        let operation = match self {
            Self::ChatCompletions => "chat/completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => return Some(format!("/openai/responses?api-version={api_version}")),
            _ => return None,
        };
        Some(format!(
            "/openai/deployments/{deployment}/{operation}?api-version={api_version}"
        ))
    }

    /// The style of the endpoint's API.
    pub fn style(self) -> ApiStyle {
        match self {
            Self::Messages | Self::CountTokens => ApiStyle::Anthropic,
            Self::GenerateContent
            | Self::StreamGenerateContent
            | Self::GeminiCountTokens
            | Self::EmbedContent
            | Self::BatchEmbedContents => ApiStyle::Gemini,
            Self::Converse
            | Self::ConverseStream
            | Self::InvokeModel
            | Self::InvokeModelStream
            | Self::BedrockCountTokens => ApiStyle::Bedrock,
            _ => ApiStyle::OpenAi,
        }
    }

    /// The upstream path, identical to the client's (for Gemini, the
    /// template; see [`Self::gemini_path`]).
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Responses => "/v1/responses",
            Self::Models => "/v1/models",
            Self::Messages => "/v1/messages",
            Self::CountTokens => "/v1/messages/count_tokens",
            Self::GenerateContent => "/{version}/models/{model}:generateContent",
            Self::StreamGenerateContent => "/{version}/models/{model}:streamGenerateContent",
            Self::GeminiCountTokens => "/{version}/models/{model}:countTokens",
            Self::EmbedContent => "/{version}/models/{model}:embedContent",
            Self::BatchEmbedContents => "/{version}/models/{model}:batchEmbedContents",
            Self::Converse => "/model/{modelId}/converse",
            Self::ConverseStream => "/model/{modelId}/converse-stream",
            Self::InvokeModel => "/model/{modelId}/invoke",
            Self::InvokeModelStream => "/model/{modelId}/invoke-with-response-stream",
            Self::BedrockCountTokens => "/model/{modelId}/count-tokens",
        }
    }

    /// A short stable name, for metrics and receipts.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Models => "models",
            Self::Messages => "messages",
            Self::CountTokens => "count_tokens",
            Self::GenerateContent => "generate_content",
            Self::StreamGenerateContent => "stream_generate_content",
            Self::GeminiCountTokens => "gemini_count_tokens",
            Self::EmbedContent => "embed_content",
            Self::BatchEmbedContents => "batch_embed_contents",
            Self::Converse => "converse",
            Self::ConverseStream => "converse_stream",
            Self::InvokeModel => "invoke_model",
            Self::InvokeModelStream => "invoke_model_stream",
            Self::BedrockCountTokens => "bedrock_count_tokens",
        }
    }

    /// Whether a provider speaking `api` can serve this endpoint. The dry-run
    /// provider serves every style.
    pub fn served_by(self, api: ProviderApi) -> bool {
        matches!(
            (api, self.style()),
            (ProviderApi::DryRun, _)
                | (
                    ProviderApi::Openai | ProviderApi::AzureOpenai,
                    ApiStyle::OpenAi
                )
                | (ProviderApi::Anthropic, ApiStyle::Anthropic)
                | (ProviderApi::Gemini | ProviderApi::Vertex, ApiStyle::Gemini)
                | (ProviderApi::Bedrock, ApiStyle::Bedrock)
        )
    }
}

/// A path segment's model id with its percent-escapes decoded; `None` when
/// an escape is malformed or decodes to anything but `:` (the one character
/// of a model id the SDKs escape).
fn decode_model_id(encoded: &str) -> Option<String> {
    let mut out = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at + 1..at + 3)?;
        if !escape.eq_ignore_ascii_case("3A") {
            return None;
        }
        out.push(':');
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_paths_and_methods_are_served() {
        use http::Method;
        assert_eq!(
            Endpoint::from_request(&Method::POST, "/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::from_request(&Method::POST, "/v1/messages/count_tokens"),
            Some(Endpoint::CountTokens)
        );
        assert_eq!(
            Endpoint::from_request(&Method::GET, "/v1/models"),
            Some(Endpoint::Models)
        );
        assert_eq!(
            Endpoint::from_request(&Method::GET, "/v1/chat/completions"),
            None
        );
        assert_eq!(Endpoint::from_request(&Method::POST, "/v1/files"), None);
        assert_eq!(
            Endpoint::from_request(&Method::POST, "/v1/chat/completions/../../admin"),
            None
        );
        assert_eq!(
            Endpoint::from_request(&Method::POST, "/v2/chat/completions"),
            None
        );
    }

    #[test]
    fn azure_paths_name_the_endpoint_and_the_deployment() {
        use http::Method;
        assert_eq!(
            Endpoint::from_azure_path(
                &Method::POST,
                "/openai/deployments/gpt-4o-prod/chat/completions"
            ),
            Some((Endpoint::ChatCompletions, Some("gpt-4o-prod")))
        );
        assert_eq!(
            Endpoint::from_azure_path(&Method::POST, "/openai/deployments/emb.small_1/embeddings"),
            Some((Endpoint::Embeddings, Some("emb.small_1")))
        );
        assert_eq!(
            Endpoint::from_azure_path(&Method::POST, "/openai/v1/responses"),
            Some((Endpoint::Responses, None))
        );
        for refused in [
            "/openai/deployments/../chat/completions",
            "/openai/deployments//chat/completions",
            "/openai/deployments/x/files",
            "/openai/deployments/-x/chat/completions",
            "/openai/v1/files",
            "/v1/chat/completions",
        ] {
            assert_eq!(
                Endpoint::from_azure_path(&Method::POST, refused),
                None,
                "{refused}"
            );
        }
        let long = format!("/openai/deployments/{}/chat/completions", "d".repeat(65));
        assert_eq!(Endpoint::from_azure_path(&Method::POST, &long), None);
        assert_eq!(
            Endpoint::from_azure_path(&Method::GET, "/openai/deployments/d/chat/completions"),
            None
        );
        assert_eq!(
            Endpoint::ChatCompletions
                .azure_path("gpt-4o-prod", "2024-10-21")
                .as_deref(),
            Some("/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21")
        );
        assert_eq!(
            Endpoint::Embeddings.azure_path("d", "v1").as_deref(),
            Some("/openai/v1/embeddings")
        );
        assert_eq!(Endpoint::Messages.azure_path("d", "2024-10-21"), None);
        // Nothing but a deployment name is ever put into the path.
        assert_eq!(
            Endpoint::ChatCompletions.azure_path("a/../../x?y=", "2024-10-21"),
            None
        );
        assert_eq!(
            Endpoint::ChatCompletions.azure_path("gpt 4o", "2024-10-21"),
            None
        );
        assert_eq!(Endpoint::ChatCompletions.azure_path("d", "2024&x=1"), None);
        assert!(Endpoint::ChatCompletions.served_by(ProviderApi::AzureOpenai));
        assert!(!Endpoint::Messages.served_by(ProviderApi::AzureOpenai));
    }

    #[test]
    fn gemini_paths_name_the_endpoint_the_model_and_the_version() {
        use http::Method;
        let target = |model, version| GeminiTarget { model, version };
        assert_eq!(
            Endpoint::from_gemini_path(
                &Method::POST,
                "/v1beta/models/gemini-2.5-flash:generateContent",
                None
            ),
            Some((
                Endpoint::GenerateContent,
                target("gemini-2.5-flash", "v1beta")
            ))
        );
        assert_eq!(
            Endpoint::from_gemini_path(
                &Method::POST,
                "/v1/models/gemini-2.5-pro:streamGenerateContent",
                Some("key=x&alt=sse")
            ),
            Some((
                Endpoint::StreamGenerateContent,
                target("gemini-2.5-pro", "v1")
            ))
        );
        assert_eq!(
            Endpoint::from_gemini_path(
                &Method::POST,
                "/v1beta/models/vertex:gemini-2.5-pro:countTokens",
                None
            ),
            Some((
                Endpoint::GeminiCountTokens,
                target("vertex:gemini-2.5-pro", "v1beta")
            ))
        );
        for (path, query) in [
            // Only SSE framing is served for streams.
            ("/v1beta/models/g:streamGenerateContent", None),
            ("/v1beta/models/g:streamGenerateContent", Some("alt=json")),
            ("/v1beta/models/g:streamGenerateContent", Some("alt=ssex")),
            ("/v1beta/models/g:predict", None),
            ("/v1beta/models/g", None),
            ("/v1beta/models/../x:generateContent", None),
            ("/v1beta/models/a/b:generateContent", None),
            ("/v1beta/models/%2e:generateContent", None),
            ("/v1beta/models/:generateContent", None),
            ("/v1beta/models/a::generateContent", None),
            ("/v2/models/g:generateContent", None),
            ("/v1beta/tunedModels/g:generateContent", None),
        ] {
            assert_eq!(
                Endpoint::from_gemini_path(&Method::POST, path, query),
                None,
                "{path}"
            );
        }
        assert_eq!(
            Endpoint::from_gemini_path(&Method::GET, "/v1beta/models/g:generateContent", None),
            None
        );
        assert_eq!(
            Endpoint::StreamGenerateContent
                .gemini_path("gemini-2.5-flash", "v1beta")
                .as_deref(),
            Some("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
        );
        assert_eq!(
            Endpoint::BatchEmbedContents
                .gemini_path("text-embedding-004", "v1")
                .as_deref(),
            Some("/v1/models/text-embedding-004:batchEmbedContents")
        );
        assert_eq!(Endpoint::GenerateContent.gemini_path("a/../b", "v1"), None);
        assert_eq!(Endpoint::GenerateContent.gemini_path("a", "v9"), None);
        assert_eq!(Endpoint::Messages.gemini_path("a", "v1"), None);
        assert!(Endpoint::EmbedContent.served_by(ProviderApi::Gemini));
        assert!(!Endpoint::EmbedContent.served_by(ProviderApi::Openai));
        assert!(!Endpoint::Embeddings.served_by(ProviderApi::Gemini));
        assert!(Endpoint::GeminiCountTokens.counts_tokens());
    }

    #[test]
    fn vertex_paths_name_the_endpoint_the_model_and_the_version() {
        use http::Method;
        let prefix = "/v1beta1/projects/app-project/locations/us-central1/publishers/google/models";
        assert_eq!(
            Endpoint::from_vertex_path(
                &Method::POST,
                &format!("{prefix}/gemini-2.5-flash:generateContent"),
                None
            ),
            Some((
                Endpoint::GenerateContent,
                GeminiTarget {
                    model: "gemini-2.5-flash",
                    version: "v1beta1"
                }
            ))
        );
        assert_eq!(
            Endpoint::from_vertex_path(
                &Method::POST,
                "/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-pro:streamGenerateContent",
                Some("alt=sse")
            ),
            Some((
                Endpoint::StreamGenerateContent,
                GeminiTarget {
                    model: "gemini-2.5-pro",
                    version: "v1"
                }
            ))
        );
        for (path, query) in [
            (format!("{prefix}/g:streamGenerateContent"), None),
            (format!("{prefix}/g:predict"), None),
            (format!("{prefix}/a/b:generateContent"), None),
            (
                "/v1beta1/projects/p/locations/l/publishers/anthropic/models/claude:rawPredict"
                    .into(),
                None,
            ),
            (
                "/v1beta1/projects/p/x/locations/l/publishers/google/models/g:generateContent"
                    .into(),
                None,
            ),
            (
                "/v1beta1/projects/../locations/l/publishers/google/models/g:generateContent"
                    .into(),
                None,
            ),
            (
                "/v1beta/projects/p/locations/l/publishers/google/models/g:generateContent".into(),
                None,
            ),
            (
                "/v1beta1/publishers/google/models/g:generateContent".into(),
                None,
            ),
        ] {
            assert_eq!(
                Endpoint::from_vertex_path(&Method::POST, &path, query),
                None,
                "{path}"
            );
        }
        let target = VertexTarget {
            project: "my-ml-project".into(),
            location: "europe-west4".into(),
        };
        assert_eq!(
            Endpoint::StreamGenerateContent
                .vertex_path(&target, "gemini-2.5-flash", "v1beta")
                .as_deref(),
            Some(
                "/v1beta1/projects/my-ml-project/locations/europe-west4/publishers/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
            )
        );
        assert_eq!(
            Endpoint::GeminiCountTokens
                .vertex_path(&target, "g", "v1")
                .as_deref(),
            Some(
                "/v1/projects/my-ml-project/locations/europe-west4/publishers/google/models/g:countTokens"
            )
        );
        // A Vertex client's beta is the Gemini API's beta, and back.
        assert_eq!(
            Endpoint::GenerateContent
                .gemini_path("g", "v1beta1")
                .as_deref(),
            Some("/v1beta/models/g:generateContent")
        );
        let odd = VertexTarget {
            project: "p/../q".into(),
            location: "l".into(),
        };
        assert_eq!(Endpoint::GenerateContent.vertex_path(&odd, "g", "v1"), None);
        assert_eq!(Endpoint::Messages.vertex_path(&target, "g", "v1"), None);
        assert!(Endpoint::GenerateContent.served_by(ProviderApi::Vertex));
        assert!(!Endpoint::ChatCompletions.served_by(ProviderApi::Vertex));
    }

    #[test]
    fn bedrock_paths_name_the_endpoint_and_the_decoded_model_id() {
        use http::Method;
        let id = "anthropic.claude-3-5-haiku-20241022-v1:0";
        for (path, endpoint) in [
            ("converse", Endpoint::Converse),
            ("converse-stream", Endpoint::ConverseStream),
            ("invoke", Endpoint::InvokeModel),
            ("invoke-with-response-stream", Endpoint::InvokeModelStream),
            ("count-tokens", Endpoint::BedrockCountTokens),
        ] {
            let client = format!("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/{path}");
            assert_eq!(
                Endpoint::from_bedrock_path(&Method::POST, &client),
                Some((endpoint, id.to_string()))
            );
            assert_eq!(endpoint.bedrock_path(id), Some(client));
            assert_eq!(endpoint.style(), ApiStyle::Bedrock);
        }
        assert_eq!(
            Endpoint::from_bedrock_path(
                &Method::POST,
                "/model/us.meta.llama3-2-1b-instruct-v1:0/converse"
            ),
            Some((
                Endpoint::Converse,
                "us.meta.llama3-2-1b-instruct-v1:0".into()
            ))
        );
        for refused in [
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Afoundation-model%2Fx/converse",
            "/model/a%2Fb/converse",
            "/model/a%3/converse",
            "/model/a%/converse",
            "/model//converse",
            "/model/../converse",
            "/model/a/b/converse",
            "/model/a/count_tokens",
            "/model/a/async-invoke",
            "/model/a",
        ] {
            assert_eq!(
                Endpoint::from_bedrock_path(&Method::POST, refused),
                None,
                "{refused}"
            );
        }
        assert_eq!(
            Endpoint::from_bedrock_path(&Method::GET, "/model/a/converse"),
            None
        );
        assert_eq!(Endpoint::Converse.bedrock_path("a/b"), None);
        assert_eq!(Endpoint::Messages.bedrock_path("a"), None);
        assert!(Endpoint::Converse.served_by(ProviderApi::Bedrock));
        assert!(!Endpoint::Messages.served_by(ProviderApi::Bedrock));
        assert!(Endpoint::InvokeModelStream.always_streams());
        assert!(Endpoint::BedrockCountTokens.counts_tokens());
    }

    proptest::proptest! {
        /// Whatever a client sends, a served Gemini or Vertex AI path yields
        /// a model that is a single path segment, and the upstream path built
        /// from it parses back to the same endpoint and model: nothing of the
        /// client's path but the model reaches the provider.
        #[test]
        fn google_paths_only_ever_carry_a_model_segment(
            version in proptest::sample::select(vec!["v1", "v1beta", "v1beta1", "v2"]),
            project in "[a-z./%-]{0,12}",
            model in "[a-zA-Z0-9.:/%_-]{0,20}",
            method in proptest::sample::select(vec!["generateContent", "countTokens", "embedContent", "x"]),
        ) {
            let paths = [
                format!("/{version}/models/{model}:{method}"),
                format!("/{version}/projects/{project}/locations/l/publishers/google/models/{model}:{method}"),
            ];
            let target = VertexTarget { project: "p".into(), location: "us-central1".into() };
            for path in &paths {
                let parsed = Endpoint::from_gemini_path(&http::Method::POST, path, None)
                    .or_else(|| Endpoint::from_vertex_path(&http::Method::POST, path, None));
                let Some((endpoint, found)) = parsed else { continue };
                proptest::prop_assert!(!found.model.contains(['/', '%', '?']));
                let name = found.model.rsplit(':').next().unwrap_or_default();
                if let Some(upstream) = endpoint.vertex_path(&target, name, found.version) {
                    let back = Endpoint::from_vertex_path(&http::Method::POST, &upstream, None);
                    proptest::prop_assert_eq!(back.map(|(e, t)| (e, t.model)), Some((endpoint, name)));
                }
                if let Some(upstream) = endpoint.gemini_path(name, found.version) {
                    let back = Endpoint::from_gemini_path(&http::Method::POST, &upstream, None);
                    proptest::prop_assert_eq!(back.map(|(e, t)| (e, t.model)), Some((endpoint, name)));
                }
            }
        }
    }

    #[test]
    fn styles_and_serving_providers() {
        assert_eq!(Endpoint::Messages.style(), ApiStyle::Anthropic);
        assert_eq!(Endpoint::Embeddings.style(), ApiStyle::OpenAi);
        assert!(Endpoint::Messages.served_by(ProviderApi::Anthropic));
        assert!(!Endpoint::Messages.served_by(ProviderApi::Openai));
        assert!(Endpoint::ChatCompletions.served_by(ProviderApi::DryRun));
    }
}
