//! Signing Bedrock requests with AWS Signature Version 4, by the AWS SDK's
//! own signer (`aws-sigv4`). The app's signature was made with the app's
//! credentials and is stripped with its headers; the request the gateway
//! sends is signed anew with the provider's, over the exact bytes it sends.
//!
//! A Bedrock key in the provider's Secret is `ACCESS_KEY_ID:SECRET_ACCESS_KEY`
//! (neither part holds a colon). The secret part reaches the signer only;
//! the `Authorization` header it yields is marked sensitive.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign as sigv4};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::{HeaderName, HeaderValue};

use crate::credentials::ApiKey;

/// The SigV4 service name of the Bedrock runtime.
pub const SERVICE: &str = "bedrock";

/// Why a request could not be signed. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningFailure {
    #[error("the key is not ACCESS_KEY_ID:SECRET_ACCESS_KEY")]
    KeyShape,
    #[error("no AWS region is configured")]
    NoRegion,
    #[error("the request could not be signed")]
    Signer,
}

/// AWS credentials to sign with: a static key pair from the provider's
/// Secret, or temporary credentials (with their session token) from web
/// identity. `Debug` shows the access key id only.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl AwsCredentials {
    /// Credentials from their parts; `None` when a part is empty or holds a
    /// colon or a non-printable byte.
    pub fn new(id: &str, secret: &str, session_token: Option<&str>) -> Option<Self> {
        let plausible = |part: &str| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_graphic() && b != b':')
        };
        let ok = plausible(id) && plausible(secret) && session_token.is_none_or(plausible);
        ok.then(|| Self {
            access_key_id: id.to_owned(),
            secret_access_key: secret.to_owned(),
            session_token: session_token.map(str::to_owned),
        })
    }

    /// The static key pair a Bedrock key in a Secret holds:
    /// `ACCESS_KEY_ID:SECRET_ACCESS_KEY`.
    pub fn from_key(key: &ApiKey) -> Result<Self, SigningFailure> {
        let (id, secret) = key
            .expose()
            .split_once(':')
            .ok_or(SigningFailure::KeyShape)?;
        Self::new(id, secret, None).ok_or(SigningFailure::KeyShape)
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }
}

/// Signs `request` (its method, URI and headers as set so far) with `body`
/// for the Bedrock runtime in `region`, now, adding `x-amz-date` and
/// `authorization`.
pub fn sign(
    request: &mut http::request::Builder,
    body: &[u8],
    credentials: &AwsCredentials,
    region: &str,
) -> Result<(), SigningFailure> {
    sign_at(request, body, credentials, region, SystemTime::now())
}

/// [`sign`] at `time`.
pub fn sign_at(
    request: &mut http::request::Builder,
    body: &[u8],
    credentials: &AwsCredentials,
    region: &str,
    time: SystemTime,
) -> Result<(), SigningFailure> {
    if region.is_empty() {
        return Err(SigningFailure::NoRegion);
    }
    let identity: Identity = Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "tollgate-provider",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| SigningFailure::Signer)?
        .into();
    let method = request
        .method_ref()
        .map(http::Method::as_str)
        .unwrap_or("POST")
        .to_owned();
    let uri = request
        .uri_ref()
        .map(ToString::to_string)
        .ok_or(SigningFailure::Signer)?;
    let headers: Vec<(String, String)> = request
        .headers_ref()
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    let signable = SignableRequest::new(
        &method,
        uri,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .map_err(|_| SigningFailure::Signer)?;
    let (instructions, _signature) = sigv4(signable, &params)
        .map_err(|_| SigningFailure::Signer)?
        .into_parts();
    let target = request.headers_mut().ok_or(SigningFailure::Signer)?;
    for (name, value) in instructions.headers() {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| SigningFailure::Signer)?;
        let mut value = HeaderValue::from_str(value).map_err(|_| SigningFailure::Signer)?;
        value.set_sensitive(true);
        target.insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(text: &str) -> AwsCredentials {
        AwsCredentials::from_key(&ApiKey::new(text).unwrap()).unwrap()
    }

    fn request() -> http::request::Builder {
        http::Request::post(
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
        )
        .header("content-type", "application/json")
    }

    #[test]
    fn signs_with_the_provider_key_for_the_region() {
        let mut builder = request();
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01
        sign_at(
            &mut builder,
            b"{}",
            &key("AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            "us-east-1",
            time,
        )
        .unwrap();
        let headers = builder.headers_ref().unwrap();
        assert_eq!(headers["x-amz-date"], "20260101T000000Z");
        let auth = headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="
            ),
            "{auth}"
        );
        assert!(headers["authorization"].is_sensitive());
        assert!(!auth.contains("wJalrXUtnFEMI"), "no secret in the header");
        // The same request signs the same; another body does not.
        let again = |body: &[u8]| {
            let mut b = request();
            sign_at(
                &mut b,
                body,
                &key("AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
                "us-east-1",
                time,
            )
            .unwrap();
            b.headers_ref().unwrap()["authorization"].clone()
        };
        assert_eq!(again(b"{}"), headers["authorization"]);
        assert_ne!(again(b"{ }"), headers["authorization"]);
    }

    #[test]
    fn keys_without_both_parts_and_missing_regions_are_refused() {
        for bad in ["AKIDONLY", ":secret", "AKID:", "a:b:c"] {
            assert_eq!(
                AwsCredentials::from_key(&ApiKey::new(bad).unwrap()),
                Err(SigningFailure::KeyShape),
                "{bad:?}"
            );
        }
        // A session token is signed over, as x-amz-security-token.
        let temporary = AwsCredentials::new("ASIATEMP", "secret", Some("session-token")).unwrap();
        let mut builder = request();
        sign(&mut builder, b"{}", &temporary, "us-east-1").unwrap();
        let headers = builder.headers_ref().unwrap();
        assert_eq!(headers["x-amz-security-token"], "session-token");
        assert!(
            headers["authorization"]
                .to_str()
                .unwrap()
                .contains("x-amz-security-token")
        );
        assert!(!format!("{temporary:?}").contains("secret"));
        assert_eq!(
            sign(&mut request(), b"{}", &key("AKID:secret"), ""),
            Err(SigningFailure::NoRegion)
        );
    }
}
