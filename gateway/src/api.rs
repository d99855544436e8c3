//! The API surfaces the gateway serves: which paths exist, which API style
//! each belongs to, and which provider APIs may serve it. Any other path is
//! refused, never passed through.

use tollgate_wire::config::ProviderApi;

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
                | (ProviderApi::Openai, ApiStyle::OpenAi)
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
    fn styles_and_serving_providers() {
        assert_eq!(Endpoint::Messages.style(), ApiStyle::Anthropic);
        assert_eq!(Endpoint::Embeddings.style(), ApiStyle::OpenAi);
        assert!(Endpoint::Messages.served_by(ProviderApi::Anthropic));
        assert!(!Endpoint::Messages.served_by(ProviderApi::Openai));
        assert!(Endpoint::ChatCompletions.served_by(ProviderApi::DryRun));
    }
}
