//! Who is calling, and what they may do.
//!
//! Authentication sits behind the small [`Authenticator`] trait: in a cluster,
//! [`TokenReviewer`] checks projected ServiceAccount tokens with the API server's
//! TokenReview (audience `tollgate.dev/recorder`), caching answers briefly; in
//! local mode, [`StaticTokens`] accepts the generated token from the 0600 token
//! file; tests inject their own.
//!
//! Authorization is [`Policy`], pure:
//! - a ServiceAccount may ship receipts only for its own namespace and
//!   serviceAccount (and its own pod, when the token is pod-bound), read its own
//!   streams, and take leases on quotas of its namespace or `cluster/` quotas;
//! - usage and bundle export need a reader: the local caller, or a user, group or
//!   ServiceAccount named with `--reader`;
//! - the local caller may do everything.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tollgate_evidence::KeyCertificate;

use crate::error::RecorderError;

/// The TokenReview audience recorder tokens must carry.
pub const AUDIENCE: &str = "tollgate.dev/recorder";
/// How long a TokenReview answer is reused.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most cached TokenReview answers.
pub const TOKEN_CACHE_ENTRIES: usize = 10_000;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The local-mode token holder: may do everything.
    Local,
    /// A Kubernetes ServiceAccount.
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The pod the token is bound to, if any.
        pod: Option<String>,
    },
    /// A user the API server vouched for through its front proxy (the aggregated
    /// `usage.tollgate.dev` API), whose read access the API server's authorizer
    /// already decided (`SubjectAccessReview`).
    Reader {
        /// Username.
        name: String,
        /// The namespaces whose usage it may read; `None`: every namespace (and
        /// bundle exports, which span them all).
        namespaces: Option<std::collections::BTreeSet<String>>,
    },
    /// Another Kubernetes user.
    User {
        /// Username.
        name: String,
        /// Groups.
        groups: Vec<String>,
    },
}

impl Caller {
    /// A stable name: `local`, `system:serviceaccount:NS:NAME`, or the username.
    pub fn name(&self) -> String {
        match self {
            Self::Local => "local".into(),
            Self::ServiceAccount {
                namespace, name, ..
            } => format!("system:serviceaccount:{namespace}:{name}"),
            Self::User { name, .. } | Self::Reader { name, .. } => name.clone(),
        }
    }

    /// The caller a TokenReview user maps to.
    pub fn from_user(username: &str, groups: Vec<String>, pod: Option<String>) -> Self {
        match username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
                Self::ServiceAccount {
                    namespace: namespace.into(),
                    name: name.into(),
                    pod,
                }
            }
            _ => Self::User {
                name: username.into(),
                groups,
            },
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is not valid (unknown, expired, wrong audience).
    #[error("{0}")]
    Invalid(String),
    /// The token could not be checked (TokenReview unreachable).
    #[error("{0}")]
    Unavailable(String),
}

impl From<AuthError> for RecorderError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid(m) => Self::Unauthenticated(m),
            AuthError::Unavailable(m) => Self::Unavailable(m),
        }
    }
}

/// Turns a bearer token into a caller.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// Checks `token`.
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>>;
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Fixed tokens (local mode, tests). Tokens are kept only as SHA-256 digests.
#[derive(Debug, Default)]
pub struct StaticTokens {
    tokens: Vec<([u8; 32], Caller)>,
}

impl StaticTokens {
    /// No tokens.
    pub fn new() -> Self {
        Self::default()
    }

    /// The local-mode token.
    pub fn local(token: &str) -> Self {
        Self::new().with(token, Caller::Local)
    }

    /// Adds a token for `caller`.
    pub fn with(mut self, token: &str, caller: Caller) -> Self {
        self.tokens.push((digest(token), caller));
        self
    }
}

impl Authenticator for StaticTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        let d = digest(token);
        // Compare every entry's full digest, so timing does not depend on which matched.
        let found = self.tokens.iter().fold(None, |found, (t, c)| {
            found.or(tollgate_wire::secret::constant_time_eq(t, &d).then_some(c))
        });
        let result = found
            .cloned()
            .ok_or_else(|| AuthError::Invalid("unknown bearer token".into()));
        Box::pin(async move { result })
    }
}

/// TokenReview against the API server with the recorder's in-cluster credentials.
pub struct TokenReviewer {
    client: kube::Client,
    audience: String,
    cache: Mutex<HashMap<[u8; 32], (Caller, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// Uses the in-cluster (or kubeconfig) credentials.
    pub async fn in_cluster(audience: &str) -> Result<Self, AuthError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| AuthError::Unavailable(format!("kubernetes client: {e}")))?;
        Ok(Self::with_client(client, audience))
    }

    /// Uses `client`.
    pub fn with_client(client: kube::Client, audience: &str) -> Self {
        Self {
            client,
            audience: audience.to_string(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let review = TokenReview {
            metadata: Default::default(),
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            status: None,
        };
        let answer = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview: {e}")))?;
        let status = answer
            .status
            .ok_or_else(|| AuthError::Unavailable("TokenReview returned no status".into()))?;
        if status.authenticated != Some(true) {
            return Err(AuthError::Invalid(
                status
                    .error
                    .unwrap_or_else(|| "token not authenticated".into()),
            ));
        }
        if !status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience))
        {
            return Err(AuthError::Invalid(format!(
                "token is not for audience {}",
                self.audience
            )));
        }
        let user = status
            .user
            .ok_or_else(|| AuthError::Invalid("TokenReview named no user".into()))?;
        let pod = user
            .extra
            .as_ref()
            .and_then(|e| e.get("authentication.kubernetes.io/pod-name"))
            .and_then(|v| v.first().cloned());
        Ok(Caller::from_user(
            user.username.as_deref().unwrap_or_default(),
            user.groups.unwrap_or_default(),
            pod,
        ))
    }
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Caller, AuthError>> {
        Box::pin(async move {
            let key = digest(token);
            let now = Instant::now();
            if let Some((caller, at)) = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                && now.duration_since(*at) < TOKEN_CACHE_TTL
            {
                return Ok(caller.clone());
            }
            let caller = self.review(token).await?;
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= TOKEN_CACHE_ENTRIES {
                cache.retain(|_, (_, at)| now.duration_since(*at) < TOKEN_CACHE_TTL);
                if cache.len() >= TOKEN_CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key, (caller.clone(), now));
            Ok(caller)
        })
    }
}

/// What callers may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Readers of usage and exports: usernames, `system:serviceaccount:NS:NAME`,
    /// or `group:NAME`.
    pub readers: Vec<String>,
}

impl Policy {
    /// Whether `caller` may read usage and export bundles.
    pub fn check_read(&self, caller: &Caller) -> Result<(), RecorderError> {
        let allowed = match caller {
            Caller::Local => true,
            Caller::Reader { namespaces, .. } => namespaces.is_none(),
            Caller::ServiceAccount { .. } => self.readers.contains(&caller.name()),
            Caller::User { name, groups } => {
                self.readers.contains(name)
                    || groups
                        .iter()
                        .any(|g| self.readers.contains(&format!("group:{g}")))
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(RecorderError::Forbidden(format!(
                "{} may not read usage or export bundles (see --reader)",
                caller.name()
            )))
        }
    }

    /// Who a key health report comes from: a gateway's pod (its
    /// ServiceAccount when the token is not pod-bound), or the local caller.
    /// Each reporter's report replaces its last one, so a pod can speak only
    /// for itself.
    pub fn key_reporter(&self, caller: &Caller) -> Result<String, RecorderError> {
        match caller {
            Caller::Local => Ok("local".into()),
            Caller::ServiceAccount {
                namespace,
                pod: Some(pod),
                ..
            } => Ok(format!("{namespace}/pod/{pod}")),
            Caller::ServiceAccount {
                namespace,
                name,
                pod: None,
            } => Ok(format!("{namespace}/serviceaccount/{name}")),
            Caller::User { .. } | Caller::Reader { .. } => Err(RecorderError::Forbidden(
                "only gateways (ServiceAccounts) report key health".into(),
            )),
        }
    }

    /// Whether `caller` may ship receipts signed under `certificate`.
    pub fn check_ship(
        &self,
        caller: &Caller,
        certificate: &KeyCertificate,
    ) -> Result<(), RecorderError> {
        match caller {
            Caller::Local => Ok(()),
            Caller::ServiceAccount {
                namespace,
                name,
                pod,
            } => {
                let same_sa = certificate.namespace.as_str() == namespace
                    && certificate.service_account.as_str() == name;
                let same_pod = pod
                    .as_ref()
                    .is_none_or(|p| certificate.pod_name.as_str() == p);
                if same_sa && same_pod {
                    Ok(())
                } else {
                    Err(RecorderError::Forbidden(format!(
                        "{} may ship receipts only for its own pods",
                        caller.name()
                    )))
                }
            }
            Caller::User { .. } | Caller::Reader { .. } => Err(RecorderError::Forbidden(
                "only gateways (ServiceAccounts) ship receipts".into(),
            )),
        }
    }

    /// Whether `caller` may read usage of `namespace`.
    pub fn check_read_namespace(
        &self,
        caller: &Caller,
        namespace: &str,
    ) -> Result<(), RecorderError> {
        match caller {
            Caller::Reader {
                namespaces: Some(readable),
                name,
            } if !readable.contains(namespace) => Err(RecorderError::Forbidden(format!(
                "{name} may not read usage in namespace {namespace:?}"
            ))),
            Caller::Reader { .. } => Ok(()),
            _ => self.check_read(caller),
        }
    }

    /// Whether `caller` may see a stream of `namespace`.
    pub fn check_stream(&self, caller: &Caller, namespace: &str) -> Result<(), RecorderError> {
        match caller {
            Caller::ServiceAccount { namespace: ns, .. } if ns == namespace => Ok(()),
            _ => self.check_read(caller),
        }
    }

    /// Whether `caller` may take leases on `quota_id`.
    pub fn check_lease(&self, caller: &Caller, quota_id: &str) -> Result<(), RecorderError> {
        match caller {
            Caller::Local => Ok(()),
            Caller::ServiceAccount { namespace, .. } => {
                let scope = quota_id.split_once('/').map(|(s, _)| s);
                if scope == Some(namespace.as_str()) || scope == Some("cluster") {
                    Ok(())
                } else {
                    Err(RecorderError::Forbidden(format!(
                        "{} may lease only quotas of its namespace or cluster quotas",
                        caller.name()
                    )))
                }
            }
            Caller::User { .. } | Caller::Reader { .. } => Err(RecorderError::Forbidden(
                "only gateways (ServiceAccounts) take leases".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(ns: &str, name: &str) -> Caller {
        Caller::ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
            pod: None,
        }
    }

    #[test]
    fn usernames_map_to_service_accounts() {
        assert_eq!(
            Caller::from_user("system:serviceaccount:team-a:app", vec![], None),
            sa("team-a", "app")
        );
        assert!(matches!(
            Caller::from_user("alice", vec!["dev".into()], None),
            Caller::User { .. }
        ));
    }

    #[test]
    fn leases_are_scoped_to_the_callers_namespace() {
        let p = Policy::default();
        assert!(p.check_lease(&sa("a", "x"), "a/q").is_ok());
        assert!(p.check_lease(&sa("a", "x"), "cluster/q").is_ok());
        assert!(p.check_lease(&sa("a", "x"), "b/q").is_err());
        assert!(p.check_lease(&Caller::Local, "b/q").is_ok());
    }

    #[test]
    fn readers_are_named() {
        let p = Policy {
            readers: vec![
                "group:auditors".into(),
                "system:serviceaccount:ops:report".into(),
            ],
        };
        assert!(p.check_read(&Caller::Local).is_ok());
        assert!(p.check_read(&sa("ops", "report")).is_ok());
        assert!(p.check_read(&sa("ops", "other")).is_err());
        let auditor = Caller::User {
            name: "bob".into(),
            groups: vec!["auditors".into()],
        };
        assert!(p.check_read(&auditor).is_ok());
    }

    #[test]
    fn readers_vouched_for_by_the_api_server_read_only_their_namespaces() {
        let p = Policy::default();
        let everything = Caller::Reader {
            name: "auditor".into(),
            namespaces: None,
        };
        assert!(p.check_read(&everything).is_ok());
        assert!(p.check_read_namespace(&everything, "x").is_ok());
        let alice = Caller::Reader {
            name: "alice".into(),
            namespaces: Some(["team-a".to_string()].into()),
        };
        assert!(
            p.check_read(&alice).is_err(),
            "exports span every namespace"
        );
        assert!(p.check_read_namespace(&alice, "team-a").is_ok());
        assert!(p.check_read_namespace(&alice, "team-b").is_err());
        assert!(p.check_lease(&alice, "team-a/q").is_err());
    }

    #[tokio::test]
    async fn static_tokens_authenticate_by_digest() {
        let auth = StaticTokens::local("secret-token").with("t2", sa("a", "b"));
        assert_eq!(
            auth.authenticate("secret-token").await.unwrap(),
            Caller::Local
        );
        assert_eq!(auth.authenticate("t2").await.unwrap(), sa("a", "b"));
        assert!(auth.authenticate("nope").await.is_err());
    }
}
