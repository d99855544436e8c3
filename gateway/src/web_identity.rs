//! AWS web identity: `AssumeRoleWithWebIdentity` for Bedrock. The gateway's
//! projected ServiceAccount token (audience `tollgate.dev/aws`) is traded
//! with STS for the provider's role; the temporary credentials sign Bedrock
//! requests. The exchange is one unsigned form POST (the token is the
//! proof); the answer is STS's XML. The cache and the refresh loop are
//! shared with the other clouds ([`crate::workload_identity`]).

use std::path::Path;

use tollgate_wire::config::WebIdentitySource;

use crate::aws_signing::AwsCredentials;
use crate::workload_identity::{
    ExchangeError, Held, Issued, LIFETIME_SECONDS, form_post, post, read_token,
};

/// The role session name for a pod: `tollgate-<namespace>-<pod>`, in the
/// characters STS allows, at most 64 (CloudTrail shows it with every call).
/// A longer name keeps its first 55 characters and a hash of the whole, so
/// pods stay apart.
pub fn session_name(namespace: &str, pod: &str) -> String {
    let name: String = format!("tollgate-{namespace}-{pod}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@_-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.len() <= 64 {
        return name;
    }
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    format!("{}-{}", &name[..55], &digest[..8])
}

/// The form body of `AssumeRoleWithWebIdentity`.
pub fn assume_role_form(source: &WebIdentitySource, session_name: &str, token: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", &source.role_arn)
        .append_pair("RoleSessionName", session_name)
        .append_pair("DurationSeconds", &LIFETIME_SECONDS.to_string())
        .append_pair("WebIdentityToken", token)
        .finish()
}

/// The text of the first `<tag>` element in `xml`, if any (STS answers are
/// flat enough that no general XML parser is needed; entities are not
/// expanded, and no credential STS issues contains one).
fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].trim())
}

/// The credentials in a successful `AssumeRoleWithWebIdentity` answer.
pub fn parse_credentials(xml: &str) -> Result<Held, ExchangeError> {
    let credentials = element(xml, "Credentials").ok_or(ExchangeError::Malformed)?;
    let field = |tag| element(credentials, tag).ok_or(ExchangeError::Malformed);
    let expiration = field("Expiration")?;
    let expires_at_ms = expiration
        .parse::<jiff::Timestamp>()
        .map_err(|_| ExchangeError::Malformed)?
        .as_millisecond();
    let credentials = AwsCredentials::new(
        field("AccessKeyId")?,
        field("SecretAccessKey")?,
        Some(field("SessionToken")?),
    )
    .ok_or(ExchangeError::Malformed)?;
    Ok(Held {
        issued: Issued::Aws(credentials),
        expires_at_ms: u64::try_from(expires_at_ms).map_err(|_| ExchangeError::Malformed)?,
    })
}

/// The error code of a refused exchange (`InvalidIdentityToken`, ...), as
/// far as it is a plain code.
pub fn error_code(xml: &str) -> String {
    element(xml, "Code")
        .filter(|c| (1..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or("Unknown")
        .to_string()
}

/// One exchange with STS through `client`.
pub(crate) async fn exchange(
    client: &crate::upstream::ProviderClient,
    source: &WebIdentitySource,
    session_name: &str,
    token_file: &Path,
) -> Result<Held, ExchangeError> {
    let token = read_token(token_file)?;
    let form = assume_role_form(source, session_name, &token);
    let request = form_post(&source.sts_url, "text/xml");
    let answer = post(client, request, form, |body| {
        error_code(&String::from_utf8_lossy(body))
    })
    .await?;
    parse_credentials(&String::from_utf8_lossy(&answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> WebIdentitySource {
        WebIdentitySource {
            role_arn: "arn:aws:iam::123456789012:role/bedrock-invoke".into(),
            sts_url: "https://sts.us-east-1.amazonaws.com".into(),
        }
    }

    const ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ns:app</SubjectFromWebIdentityToken>
    <Credentials>
      <SessionToken>IQoJb3JpZ2luX2VjEXAMPLE</SessionToken>
      <SecretAccessKey>wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY</SecretAccessKey>
      <Expiration>2026-12-07T05:00:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE123</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn the_form_names_the_role_and_carries_the_token() {
        assert_eq!(session_name("ns", "pod"), "tollgate-ns-pod");
        let long = session_name("a b", &"p".repeat(80));
        assert_eq!(long.len(), 64);
        assert_ne!(
            long,
            session_name("a b", &"p".repeat(81)),
            "pods stay apart"
        );
        assert!(session_name("a b", "c").starts_with("tollgate-a-b-c"));
        let form = assume_role_form(&source(), "tollgate-ns-pod", "eyJ.token+/=");
        assert_eq!(
            form,
            "Action=AssumeRoleWithWebIdentity&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fbedrock-invoke&RoleSessionName=tollgate-ns-pod&DurationSeconds=3600&WebIdentityToken=eyJ.token%2B%2F%3D"
        );
    }

    #[test]
    fn answers_give_credentials_and_refusals_a_code() {
        let credentials = parse_credentials(ANSWER).unwrap();
        let Issued::Aws(aws) = &credentials.issued else {
            panic!("STS issues AWS credentials")
        };
        assert_eq!(aws.access_key_id(), "ASIAEXAMPLE123");
        assert_eq!(credentials.expires_at_ms, 1_796_619_600_000);
        let debug = format!("{credentials:?}");
        assert!(
            !debug.contains("wJalr") && !debug.contains("IQoJ"),
            "{debug}"
        );
        for broken in [
            "",
            "<Credentials></Credentials>",
            &ANSWER.replace("<SessionToken>IQoJb3JpZ2luX2VjEXAMPLE</SessionToken>", ""),
            &ANSWER.replace("2026-12-07T05:00:00Z", "tomorrow"),
        ] {
            assert_eq!(parse_credentials(broken), Err(ExchangeError::Malformed));
        }
        let refused = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>No OpenIDConnect provider found</Message></Error></ErrorResponse>";
        assert_eq!(error_code(refused), "InvalidIdentityToken");
        assert_eq!(error_code("<Code>a b <script></Code>"), "Unknown");
    }
}
