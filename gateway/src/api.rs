//! The API surfaces the gateway serves: which paths exist, which API style
//! each belongs to, and which provider APIs may serve it. Any other path is
//! refused, never passed through.

use tollgate_wire::config::{ProviderApi, is_deployment_name};

/// The wire style a client speaks; errors are answered in the same style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiStyle {
    OpenAi,
    Anthropic,
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
            _ => ApiStyle::OpenAi,
        }
    }

    /// The upstream path, identical to the client's.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Responses => "/v1/responses",
            Self::Models => "/v1/models",
            Self::Messages => "/v1/messages",
            Self::CountTokens => "/v1/messages/count_tokens",
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
        )
    }
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
    fn styles_and_serving_providers() {
        assert_eq!(Endpoint::Messages.style(), ApiStyle::Anthropic);
        assert_eq!(Endpoint::Embeddings.style(), ApiStyle::OpenAi);
        assert!(Endpoint::Messages.served_by(ProviderApi::Anthropic));
        assert!(!Endpoint::Messages.served_by(ProviderApi::Openai));
        assert!(Endpoint::ChatCompletions.served_by(ProviderApi::DryRun));
    }
}
