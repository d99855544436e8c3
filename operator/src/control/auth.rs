//! Who is calling: the pure checks on a TokenReview result and on the Pod
//! and Namespace it names. Every refusal has a `reason` gateways and
//! operators can act on.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::api::core::v1::{Namespace, Pod};

/// The audience gateway tokens must be minted for.
pub const GATEWAY_AUDIENCE: &str = "tollgate.dev/gateway";
/// The annotation injection writes on a pod.
pub const INJECTED_ANNOTATION: &str = "tollgate.dev/injected";
/// The namespace label that governs a namespace.
pub const INJECT_LABEL: &str = "tollgate.dev/inject";
pub const INJECT_ENABLED: &str = "enabled";

const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
const SA_PREFIX: &str = "system:serviceaccount:";

/// Why a caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No, malformed, expired or unknown token (also: bound pod gone).
    TokenInvalid,
    /// A valid token for another audience.
    WrongAudience,
    /// Not a ServiceAccount token bound to a pod.
    NotAPodToken,
    PodNotFound,
    PodUidMismatch,
    PodNotInjected,
    NamespaceNotGoverned,
}

impl Refusal {
    /// The `reason` field of the problem document.
    pub fn reason(self) -> &'static str {
        match self {
            Self::TokenInvalid => "TokenInvalid",
            Self::WrongAudience => "WrongAudience",
            Self::NotAPodToken => "NotAPodToken",
            Self::PodNotFound => "PodNotFound",
            Self::PodUidMismatch => "PodUidMismatch",
            Self::PodNotInjected => "PodNotInjected",
            Self::NamespaceNotGoverned => "NamespaceNotGoverned",
        }
    }

    /// 401 for the token, 403 for the pod checks.
    pub fn status(self) -> u16 {
        match self {
            Self::TokenInvalid | Self::WrongAudience | Self::NotAPodToken => 401,
            _ => 403,
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Self::TokenInvalid => "the bearer token is missing, invalid or expired",
            Self::WrongAudience => "the token was not minted for audience tollgate.dev/gateway",
            Self::NotAPodToken => "the token is not a ServiceAccount token bound to a pod",
            Self::PodNotFound => "the pod the token is bound to does not exist",
            Self::PodUidMismatch => "the pod the token is bound to was replaced (UID differs)",
            Self::PodNotInjected => "the pod does not carry the tollgate.dev/injected annotation",
            Self::NamespaceNotGoverned => {
                "the pod's namespace is not labelled tollgate.dev/inject=enabled"
            }
        }
    }
}

/// The pod a token was issued for, as the TokenReview says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// The `aud` claim of a JWT, read without verifying it. Only used to tell
/// `WrongAudience` from `TokenInvalid` after the TokenReview said no.
pub fn unverified_audiences(token: &str) -> Option<Vec<String>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("aud")? {
        serde_json::Value::String(s) => Some(vec![s.clone()]),
        serde_json::Value::Array(a) => Some(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

/// Reads a TokenReview status (requested with audience [`GATEWAY_AUDIENCE`]).
pub fn identity_from_review(
    status: &TokenReviewStatus,
    token: &str,
) -> Result<TokenIdentity, Refusal> {
    if status.authenticated != Some(true) {
        return Err(match unverified_audiences(token) {
            Some(aud) if !aud.iter().any(|a| a == GATEWAY_AUDIENCE) => Refusal::WrongAudience,
            _ => Refusal::TokenInvalid,
        });
    }
    if let Some(audiences) = &status.audiences
        && !audiences.iter().any(|a| a == GATEWAY_AUDIENCE)
    {
        return Err(Refusal::WrongAudience);
    }
    let user = status.user.as_ref().ok_or(Refusal::NotAPodToken)?;
    let username = user.username.as_deref().unwrap_or_default();
    let (namespace, service_account) = username
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or(Refusal::NotAPodToken)?;
    let extra = |key: &str| -> Option<String> {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|v| match v.as_slice() {
                [one] if !one.is_empty() => Some(one.clone()),
                _ => None,
            })
    };
    Ok(TokenIdentity {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name: extra(POD_NAME_EXTRA).ok_or(Refusal::NotAPodToken)?,
        pod_uid: extra(POD_UID_EXTRA).ok_or(Refusal::NotAPodToken)?,
    })
}

/// Whether a namespace's labels govern it.
pub fn is_governed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(INJECT_LABEL).map(String::as_str) == Some(INJECT_ENABLED)
}

/// The checks on the pod the token names and on its namespace.
pub fn check_pod(
    identity: &TokenIdentity,
    pod: Option<&Pod>,
    namespace: Option<&Namespace>,
) -> Result<(), Refusal> {
    let pod = pod.ok_or(Refusal::PodNotFound)?;
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(Refusal::PodNotFound);
    }
    if pod.metadata.uid.as_deref() != Some(identity.pod_uid.as_str()) {
        return Err(Refusal::PodUidMismatch);
    }
    let injected = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECTED_ANNOTATION))
        .is_some_and(|v| !v.is_empty());
    if !injected {
        return Err(Refusal::PodNotInjected);
    }
    let governed = namespace
        .and_then(|ns| ns.metadata.labels.as_ref())
        .is_some_and(is_governed);
    if !governed {
        return Err(Refusal::NamespaceNotGoverned);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            enc.encode(br#"{"alg":"RS256"}"#),
            enc.encode(claims.to_string())
        )
    }

    fn review(username: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![GATEWAY_AUDIENCE.to_owned()]),
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
                        .collect(),
                ),
                ..UserInfo::default()
            }),
            ..TokenReviewStatus::default()
        }
    }

    fn pod_review() -> TokenReviewStatus {
        review(
            "system:serviceaccount:team-a:app",
            &[(POD_NAME_EXTRA, "app-1"), (POD_UID_EXTRA, "uid-1")],
        )
    }

    #[test]
    fn a_pod_bound_token_yields_its_pod() {
        let id = identity_from_review(&pod_review(), "t").unwrap();
        assert_eq!(
            id,
            TokenIdentity {
                namespace: "team-a".into(),
                service_account: "app".into(),
                pod_name: "app-1".into(),
                pod_uid: "uid-1".into(),
            }
        );
    }

    #[test]
    fn refused_tokens_say_why() {
        let mut denied = pod_review();
        denied.authenticated = Some(false);
        let other = jwt(serde_json::json!({"aud": ["https://kubernetes.default.svc"]}));
        assert_eq!(
            identity_from_review(&denied, &other),
            Err(Refusal::WrongAudience)
        );
        let ours = jwt(serde_json::json!({"aud": [GATEWAY_AUDIENCE]}));
        assert_eq!(
            identity_from_review(&denied, &ours),
            Err(Refusal::TokenInvalid)
        );
        assert_eq!(
            identity_from_review(&denied, "garbage"),
            Err(Refusal::TokenInvalid)
        );

        let mut wrong = pod_review();
        wrong.audiences = Some(vec!["else".into()]);
        assert_eq!(
            identity_from_review(&wrong, "t"),
            Err(Refusal::WrongAudience)
        );

        let user = review("alice", &[(POD_NAME_EXTRA, "a"), (POD_UID_EXTRA, "u")]);
        assert_eq!(identity_from_review(&user, "t"), Err(Refusal::NotAPodToken));
        let unbound = review("system:serviceaccount:team-a:app", &[]);
        assert_eq!(
            identity_from_review(&unbound, "t"),
            Err(Refusal::NotAPodToken)
        );
        assert_eq!(Refusal::NotAPodToken.status(), 401);
        assert_eq!(Refusal::PodNotFound.status(), 403);
    }

    fn id() -> TokenIdentity {
        identity_from_review(&pod_review(), "t").unwrap()
    }

    fn pod(uid: &str, injected: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("app-1".into()),
                uid: Some(uid.into()),
                annotations: injected
                    .then(|| [(INJECTED_ANNOTATION.to_owned(), "1".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn ns(label: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                labels: label.map(|v| [(INJECT_LABEL.to_owned(), v.to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    #[test]
    fn pod_checks_in_order() {
        let governed = ns(Some("enabled"));
        assert_eq!(
            check_pod(&id(), Some(&pod("uid-1", true)), Some(&governed)),
            Ok(())
        );
        assert_eq!(
            check_pod(&id(), None, Some(&governed)),
            Err(Refusal::PodNotFound)
        );
        let mut deleting = pod("uid-1", true);
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(
            check_pod(&id(), Some(&deleting), Some(&governed)),
            Err(Refusal::PodNotFound)
        );
        assert_eq!(
            check_pod(&id(), Some(&pod("uid-2", true)), Some(&governed)),
            Err(Refusal::PodUidMismatch)
        );
        assert_eq!(
            check_pod(&id(), Some(&pod("uid-1", false)), Some(&governed)),
            Err(Refusal::PodNotInjected)
        );
        for namespace in [ns(None), ns(Some("disabled"))] {
            assert_eq!(
                check_pod(&id(), Some(&pod("uid-1", true)), Some(&namespace)),
                Err(Refusal::NamespaceNotGoverned)
            );
        }
    }
}
