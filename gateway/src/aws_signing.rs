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

/// The access key id and secret a Bedrock key holds.
fn key_parts(key: &ApiKey) -> Result<(&str, &str), SigningFailure> {
    let (id, secret) = key
        .expose()
        .split_once(':')
        .ok_or(SigningFailure::KeyShape)?;
    let plausible = |part: &str| !part.is_empty() && !part.contains(':');
    if plausible(id) && plausible(secret) {
        Ok((id, secret))
    } else {
        Err(SigningFailure::KeyShape)
    }
}

/// Signs `request` (its method, URI and headers as set so far) with `body`
/// for the Bedrock runtime in `region`, now, adding `x-amz-date` and
/// `authorization`.
pub fn sign(
    request: &mut http::request::Builder,
    body: &[u8],
    key: &ApiKey,
    region: &str,
) -> Result<(), SigningFailure> {
    sign_at(request, body, key, region, SystemTime::now())
}

/// [`sign`] at `time`.
pub fn sign_at(
    request: &mut http::request::Builder,
    body: &[u8],
    key: &ApiKey,
    region: &str,
    time: SystemTime,
) -> Result<(), SigningFailure> {
    if region.is_empty() {
        return Err(SigningFailure::NoRegion);
    }
    let (id, secret) = key_parts(key)?;
    let identity: Identity = Credentials::new(id, secret, None, None, "tollgate-provider").into();
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

    fn key(text: &str) -> ApiKey {
        ApiKey::new(text).unwrap()
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
                sign(&mut request(), b"{}", &key(bad), "us-east-1"),
                Err(SigningFailure::KeyShape),
                "{bad:?}"
            );
        }
        assert_eq!(
            sign(&mut request(), b"{}", &key("AKID:secret"), ""),
            Err(SigningFailure::NoRegion)
        );
    }
}
