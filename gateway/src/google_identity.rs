//! Google workload identity federation for Vertex AI. The gateway's
//! projected ServiceAccount token (audience `tollgate.dev/gcp`) is exchanged
//! with Google's Security Token Service (RFC 8693 token exchange) for a
//! federated access token; with a service account configured, that token
//! then asks the IAM Service Account Credentials API
//! (`generateAccessToken`) for the service account's own access token. The
//! last token is sent as `Authorization: Bearer`. The cache and the refresh
//! loop are shared with the other clouds ([`crate::workload_identity`]).

use std::path::Path;

use serde::Deserialize;
use tollgate_wire::config::GoogleIdentitySource;

use crate::credentials::ApiKey;
use crate::workload_identity::{
    ExchangeError, Held, Issued, LIFETIME_SECONDS, form_post, parse_oauth_answer, post, read_token,
};

/// The scope asked for: what Vertex AI accepts.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The form body of the Security Token Service's token exchange.
pub fn sts_form(source: &GoogleIdentitySource, token: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair(
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        )
        .append_pair("audience", &source.audience)
        .append_pair("scope", SCOPE)
        .append_pair(
            "requested_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        )
        .append_pair("subject_token", token)
        .append_pair("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")
        .finish()
}

/// The JSON body of `generateAccessToken`.
pub fn impersonation_body() -> String {
    serde_json::json!({"scope": [SCOPE], "lifetime": format!("{LIFETIME_SECONDS}s")}).to_string()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImpersonationAnswer {
    access_token: String,
    expire_time: String,
}

/// The service account's token in a successful `generateAccessToken`
/// answer.
pub fn parse_impersonation_answer(body: &[u8]) -> Result<Held, ExchangeError> {
    let answer: ImpersonationAnswer =
        serde_json::from_slice(body).map_err(|_| ExchangeError::Malformed)?;
    let token = ApiKey::new(&answer.access_token).ok_or(ExchangeError::Malformed)?;
    let expires_at_ms = answer
        .expire_time
        .parse::<jiff::Timestamp>()
        .map_err(|_| ExchangeError::Malformed)?
        .as_millisecond();
    Ok(Held {
        issued: Issued::Bearer(token),
        expires_at_ms: u64::try_from(expires_at_ms).map_err(|_| ExchangeError::Malformed)?,
    })
}

/// The error code of a refused step, as far as it is a plain code: the
/// token exchange's OAuth `error` (`invalid_grant`), or the IAM API's
/// `error.status` (`PERMISSION_DENIED`).
pub fn error_code(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = value.get("error");
    error
        .and_then(|e| e.as_str())
        .or_else(|| error.and_then(|e| e.get("status")).and_then(|s| s.as_str()))
        .filter(|c| {
            (1..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .unwrap_or("unknown")
        .to_string()
}

/// The token exchange, then the impersonation if one is configured.
pub(crate) async fn exchange(
    client: &crate::upstream::ProviderClient,
    source: &GoogleIdentitySource,
    token_file: &Path,
    now_ms: u64,
) -> Result<Held, ExchangeError> {
    let token = read_token(token_file)?;
    let request = form_post(&source.sts_url, "application/json");
    let answer = post(client, request, sts_form(source, &token), error_code).await?;
    let federated = parse_oauth_answer(&answer, now_ms)?;
    let Some(url) = source.impersonation_url.as_deref() else {
        return Ok(federated);
    };
    let Issued::Bearer(federated) = federated.issued else {
        return Err(ExchangeError::Malformed);
    };
    let mut bearer = http::HeaderValue::from_str(&format!("Bearer {}", federated.expose()))
        .map_err(|_| ExchangeError::Malformed)?;
    bearer.set_sensitive(true);
    let request = http::Request::post(url)
        .header(http::header::AUTHORIZATION, bearer)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json");
    let answer = post(client, request, impersonation_body(), error_code).await?;
    parse_impersonation_answer(&answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> GoogleIdentitySource {
        GoogleIdentitySource {
            audience: "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/cluster".into(),
            sts_url: "https://sts.googleapis.com/v1/token".into(),
            impersonation_url: None,
        }
    }

    #[test]
    fn the_exchange_names_the_pool_provider_and_carries_the_token() {
        let form = sts_form(&source(), "eyJ.token+/=");
        let pairs: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("grant_type"),
            Some("urn:ietf:params:oauth:grant-type:token-exchange")
        );
        assert_eq!(get("audience"), Some(source().audience.as_str()));
        assert_eq!(get("subject_token"), Some("eyJ.token+/="));
        assert_eq!(
            get("subject_token_type"),
            Some("urn:ietf:params:oauth:token-type:jwt")
        );
        assert_eq!(get("scope"), Some(SCOPE));
        assert_eq!(
            impersonation_body(),
            r#"{"lifetime":"3600s","scope":["https://www.googleapis.com/auth/cloud-platform"]}"#
        );
    }

    #[test]
    fn answers_give_tokens_and_refusals_a_code() {
        let held = parse_oauth_answer(
            br#"{"access_token":"ya29.federated","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3599}"#,
            1_000,
        )
        .unwrap();
        assert_eq!(held.expires_at_ms, 3_600_000);
        assert_eq!(
            held.issued,
            Issued::Bearer(ApiKey::new("ya29.federated").unwrap())
        );
        let held = parse_impersonation_answer(
            br#"{"accessToken":"ya29.sa-token","expireTime":"2026-12-07T05:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(held.expires_at_ms, 1_796_619_600_000);
        for broken in [
            &b""[..],
            br#"{"access_token":"","expires_in":3599}"#,
            br#"{"access_token":"a b","expires_in":3599}"#,
            br#"{"access_token":"t","expires_in":0}"#,
            br#"{"access_token":"t"}"#,
        ] {
            assert_eq!(
                parse_oauth_answer(broken, 0),
                Err(ExchangeError::Malformed),
                "{broken:?}"
            );
        }
        assert_eq!(
            parse_impersonation_answer(br#"{"accessToken":"t","expireTime":"soon"}"#),
            Err(ExchangeError::Malformed)
        );
        assert_eq!(
            error_code(
                br#"{"error":"invalid_grant","error_description":"The audience in ID Token does not match"}"#
            ),
            "invalid_grant"
        );
        assert_eq!(
            error_code(
                br#"{"error":{"code":403,"message":"Permission 'iam.serviceAccounts.getAccessToken' denied","status":"PERMISSION_DENIED"}}"#
            ),
            "PERMISSION_DENIED"
        );
        assert_eq!(error_code(br#"{"error":"<script>"}"#), "unknown");
        assert_eq!(error_code(b"not json"), "unknown");
    }
}
