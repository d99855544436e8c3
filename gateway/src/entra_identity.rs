//! Microsoft Entra workload identity for Azure OpenAI. The gateway's
//! projected ServiceAccount token (audience `tollgate.dev/azure`) is the
//! client assertion of an OAuth client-credentials grant for the provider's
//! application (`client_assertion_type` jwt-bearer), scoped to Azure
//! OpenAI in the authority's cloud; the access token is sent as `Authorization: Bearer`. The cache
//! and the refresh loop are shared with the other clouds
//! ([`crate::workload_identity`]).

use std::path::Path;

use tollgate_wire::config::EntraIdentitySource;

use crate::workload_identity::{
    ExchangeError, Held, form_post, parse_oauth_answer, post, read_token,
};

/// The form body of the client-credentials grant with the token as the
/// federated client assertion.
pub fn token_form(source: &EntraIdentitySource, token: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", &source.client_id)
        .append_pair("scope", &source.scope)
        .append_pair(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .append_pair("client_assertion", token)
        .finish()
}

/// The error of a refused grant: the OAuth `error` and the `AADSTS` code
/// Entra puts first in its description (`invalid_client AADSTS700213`),
/// as far as they are plain codes.
pub fn error_code(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let plain = |c: &&str| {
        (1..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let error = value
        .get("error")
        .and_then(|e| e.as_str())
        .filter(plain)
        .unwrap_or("unknown");
    let aadsts = value
        .get("error_description")
        .and_then(|d| d.as_str())
        .and_then(|d| d.split(|c: char| !c.is_ascii_alphanumeric()).next())
        .filter(|c| c.starts_with("AADSTS"))
        .filter(plain);
    match aadsts {
        Some(code) => format!("{error} {code}"),
        None => error.to_string(),
    }
}

/// One grant with Entra ID through `client`.
pub(crate) async fn exchange(
    client: &crate::upstream::ProviderClient,
    source: &EntraIdentitySource,
    token_file: &Path,
    now_ms: u64,
) -> Result<Held, ExchangeError> {
    let token = read_token(token_file)?;
    let request = form_post(&source.token_url, "application/json");
    let answer = post(client, request, token_form(source, &token), error_code).await?;
    parse_oauth_answer(&answer, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::ApiKey;
    use crate::workload_identity::Issued;

    #[test]
    fn the_grant_names_the_application_and_carries_the_token() {
        let source = EntraIdentitySource {
            token_url: "https://login.microsoftonline.com/t/oauth2/v2.0/token".into(),
            client_id: "5b1a7b2e-3d4c-4f6a-9e8b-0c1d2e3f4a5b".into(),
            scope: "https://cognitiveservices.azure.com/.default".into(),
        };
        assert_eq!(
            token_form(&source, "eyJ.token+/="),
            "grant_type=client_credentials&client_id=5b1a7b2e-3d4c-4f6a-9e8b-0c1d2e3f4a5b&scope=https%3A%2F%2Fcognitiveservices.azure.com%2F.default&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=eyJ.token%2B%2F%3D"
        );
    }

    #[test]
    fn answers_give_tokens_and_refusals_a_code() {
        let held = parse_oauth_answer(
            br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAi.entra.sig"}"#,
            1_000,
        )
        .unwrap();
        assert_eq!(held.expires_at_ms, 3_600_000);
        assert_eq!(
            held.issued,
            Issued::Bearer(ApiKey::new("eyJ0eXAi.entra.sig").unwrap())
        );
        for broken in [
            &b"{}"[..],
            br#"{"access_token":"","expires_in":5}"#,
            br#"{"access_token":"t","expires_in":0}"#,
        ] {
            assert_eq!(parse_oauth_answer(broken, 0), Err(ExchangeError::Malformed));
        }
        assert_eq!(
            error_code(
                br#"{"error":"invalid_client","error_description":"AADSTS700213: No matching federated identity record found for presented assertion subject 'system:serviceaccount:x:y'."}"#
            ),
            "invalid_client AADSTS700213"
        );
        assert_eq!(
            error_code(br#"{"error":"invalid_request"}"#),
            "invalid_request"
        );
        assert_eq!(error_code(b"<html>"), "unknown");
    }
}
