//! What the recorder learns from, and asks of, the cluster it runs in:
//!
//! - the receipt CA keys, from the cluster's `TrustAnchor` objects, followed while
//!   it runs (no anchor file handed over by hand);
//! - the API server's front proxy (the aggregation layer's `requestheader`
//!   settings), so that `kubectl tollgate usage` reaches the recorder through the
//!   API server as the caller's own Kubernetes identity;
//! - whether such a caller may read usage, by `SubjectAccessReview`.
//!
//! The decisions are pure functions; the kube calls are the thin shell around them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, PostParams};
use tollgate_crds::TrustAnchor;
use tollgate_evidence::TrustRoots;

use crate::error::RecorderError;
use crate::recorder::Recorder;
use crate::trust::{TrustLoadError, load_trust_roots, trust_roots};

/// How often the cluster's TrustAnchors are read again.
pub const TRUST_REFRESH: Duration = Duration::from_secs(10);
/// The API group the recorder serves through the API server's aggregation layer.
pub const API_GROUP: &str = "usage.tollgate.dev";
/// Its version.
pub const API_VERSION: &str = "v1alpha1";
/// How long a SubjectAccessReview answer is reused.
pub const ACCESS_CACHE_TTL: Duration = Duration::from_secs(10);

/// The roots to verify against: the anchor files plus the cluster's anchors. An
/// anchor in the cluster that is malformed is skipped with a warning rather than
/// taking every other anchor down with it.
pub fn merged_roots(
    files: &[PathBuf],
    cluster: &[TrustAnchor],
) -> Result<TrustRoots, TrustLoadError> {
    let mut roots = load_trust_roots(files)?;
    for anchor in cluster {
        match trust_roots(std::iter::once(anchor)) {
            Ok(more) => {
                for key in more.keys {
                    if !roots.keys.contains(&key) {
                        roots.keys.push(key);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "skipping a malformed TrustAnchor"),
        }
    }
    roots.validate()?;
    Ok(roots)
}

/// Reads the cluster's TrustAnchors now and then and hands the merged roots to
/// the recorder whenever they change. Returns once the first read has been
/// applied (or has failed, in which case the loop keeps trying).
pub async fn follow_trust_anchors(
    client: kube::Client,
    files: Vec<PathBuf>,
    recorder: Arc<Recorder>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<TrustAnchor> = Api::all(client);
    let mut last: Option<TrustRoots> = None;
    refresh_trust(&api, &files, &recorder, &mut last).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRUST_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            refresh_trust(&api, &files, &recorder, &mut last).await;
        }
    })
}

async fn refresh_trust(
    api: &Api<TrustAnchor>,
    files: &[PathBuf],
    recorder: &Recorder,
    last: &mut Option<TrustRoots>,
) {
    let anchors = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::warn!(error = %e, "listing TrustAnchors failed; keeping the current roots");
            return;
        }
    };
    match merged_roots(files, &anchors) {
        Ok(roots) if last.as_ref() != Some(&roots) => {
            let receipt_cas = roots
                .keys
                .iter()
                .filter(|k| k.role == tollgate_evidence::KeyRole::ReceiptCa)
                .count();
            tracing::info!(
                anchors = anchors.len(),
                receipt_ca_keys = receipt_cas,
                "trust roots updated from the cluster's TrustAnchors"
            );
            recorder.set_trust_roots(roots.clone());
            *last = Some(roots);
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "the TrustAnchors conflict; keeping the current roots")
        }
    }
}

/// The API server's front-proxy settings, from the ConfigMap
/// `kube-system/extension-apiserver-authentication` it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontProxy {
    /// PEM CA that signs the front proxy's client certificate.
    pub client_ca_pem: String,
    /// Common names the client certificate may carry (empty: any).
    pub allowed_names: Vec<String>,
    /// Headers naming the user (first present wins).
    pub username_headers: Vec<String>,
    /// Headers naming groups (every value counts).
    pub group_headers: Vec<String>,
}

impl FrontProxy {
    /// Reads the settings out of the ConfigMap's data; `None` when the API server
    /// has no front proxy configured.
    pub fn from_config_map(data: &std::collections::BTreeMap<String, String>) -> Option<Self> {
        let ca = data.get("requestheader-client-ca-file")?.trim();
        if ca.is_empty() {
            return None;
        }
        let list = |key: &str| -> Vec<String> {
            data.get(key)
                .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
                .unwrap_or_default()
        };
        let mut username_headers = list("requestheader-username-headers");
        if username_headers.is_empty() {
            username_headers = vec!["X-Remote-User".into()];
        }
        let mut group_headers = list("requestheader-group-headers");
        if group_headers.is_empty() {
            group_headers = vec!["X-Remote-Group".into()];
        }
        Some(Self {
            client_ca_pem: ca.to_string(),
            allowed_names: list("requestheader-allowed-names"),
            username_headers,
            group_headers,
        })
    }

    /// Reads it from the cluster.
    pub async fn load(client: kube::Client) -> Result<Option<Self>, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
        let Some(cm) = api.get_opt("extension-apiserver-authentication").await? else {
            return Ok(None);
        };
        Ok(cm.data.as_ref().and_then(Self::from_config_map))
    }

    /// Whether a verified client certificate with this common name is the front proxy.
    pub fn accepts_name(&self, common_name: Option<&str>) -> bool {
        self.allowed_names.is_empty()
            || common_name.is_some_and(|cn| self.allowed_names.iter().any(|n| n == cn))
    }

    /// The user and groups the front proxy vouches for, from the request headers.
    pub fn user(&self, headers: &http::HeaderMap) -> Option<(String, Vec<String>)> {
        let user = self
            .username_headers
            .iter()
            .find_map(|h| headers.get(h.as_str()))
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|u| !u.is_empty())?
            .to_string();
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()))
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect();
        Some((user, groups))
    }
}

/// What a vouched-for user may read, as decided by the API server's authorizer.
///
/// The API server has already authorized the request before proxying it (a GET
/// of `/apis/usage.tollgate.dev/v1alpha1/[namespaces/NS/]RESOURCE` is `list
/// RESOURCE`); the recorder asks again for the same user, groups, verb, resource
/// and namespace (not the `X-Remote-Extra-*` attributes, which Tollgate's roles
/// do not use), so that a request is never served on headers alone.
pub trait AccessReviewer: Send + Sync + std::fmt::Debug {
    /// Whether `user` (in `groups`) may `list` `resource` of [`API_GROUP`] in
    /// `namespace` (cluster-wide when `None`).
    fn allowed<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [String],
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<bool, RecorderError>>;
}

type AccessKey = (String, Vec<String>, String, Option<String>);

/// `SubjectAccessReview` against the API server, cached briefly.
pub struct SubjectAccessReviewer {
    client: kube::Client,
    cache: Mutex<HashMap<AccessKey, (bool, Instant)>>,
}

impl std::fmt::Debug for SubjectAccessReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectAccessReviewer")
            .finish_non_exhaustive()
    }
}

impl SubjectAccessReviewer {
    /// Uses `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn review(
        &self,
        user: &str,
        groups: &[String],
        resource: &str,
        namespace: Option<&str>,
    ) -> Result<bool, RecorderError> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            metadata: Default::default(),
            spec: SubjectAccessReviewSpec {
                user: Some(user.to_string()),
                groups: Some(groups.to_vec()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(API_GROUP.into()),
                    version: Some(API_VERSION.into()),
                    resource: Some(resource.into()),
                    verb: Some("list".into()),
                    namespace: namespace.map(String::from),
                    ..Default::default()
                }),
                ..Default::default()
            },
            status: None,
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| RecorderError::Unavailable(format!("SubjectAccessReview: {e}")))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

impl AccessReviewer for SubjectAccessReviewer {
    fn allowed<'a>(
        &'a self,
        user: &'a str,
        groups: &'a [String],
        resource: &'a str,
        namespace: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<bool, RecorderError>> {
        Box::pin(async move {
            let key: AccessKey = (
                user.to_string(),
                groups.to_vec(),
                resource.to_string(),
                namespace.map(String::from),
            );
            let now = Instant::now();
            if let Some((allowed, at)) = self
                .cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                && now.duration_since(*at) < ACCESS_CACHE_TTL
            {
                return Ok(*allowed);
            }
            let allowed = self.review(user, groups, resource, namespace).await?;
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= 10_000 {
                cache.clear();
            }
            cache.insert(key, (allowed, now));
            Ok(allowed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn front_proxy_settings_come_from_the_config_map() {
        assert_eq!(FrontProxy::from_config_map(&data(&[])), None);
        let fp = FrontProxy::from_config_map(&data(&[
            ("requestheader-client-ca-file", "PEM"),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
        ]))
        .unwrap();
        assert_eq!(fp.allowed_names, vec!["front-proxy-client".to_string()]);
        assert!(fp.accepts_name(Some("front-proxy-client")));
        assert!(!fp.accepts_name(Some("someone-else")));
        assert!(!fp.accepts_name(None));
        let any =
            FrontProxy::from_config_map(&data(&[("requestheader-client-ca-file", "PEM")])).unwrap();
        assert!(any.accepts_name(None));
        assert_eq!(any.username_headers, vec!["X-Remote-User".to_string()]);
    }

    #[test]
    fn the_vouched_user_and_groups_come_from_the_headers() {
        let fp =
            FrontProxy::from_config_map(&data(&[("requestheader-client-ca-file", "PEM")])).unwrap();
        let mut h = http::HeaderMap::new();
        assert_eq!(fp.user(&h), None);
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.append("x-remote-group", "team-a".parse().unwrap());
        h.append("x-remote-group", "system:authenticated".parse().unwrap());
        assert_eq!(
            fp.user(&h),
            Some((
                "alice".to_string(),
                vec!["team-a".to_string(), "system:authenticated".to_string()]
            ))
        );
    }

    fn anchor(seed: u8, name: &str) -> TrustAnchor {
        use tollgate_crds::manifest::{Manifest, parse_manifests};
        use tollgate_evidence::{KeyRole, PublicKey, SigningKey, Timestamp};
        let key = PublicKey::of_signing_key(&SigningKey::from_bytes(&[seed; 32]));
        let at = Timestamp::parse_canonical("2025-01-01T00:00:00.000Z").unwrap();
        let yaml = crate::trust::anchor_yaml(name, &key, KeyRole::ReceiptCa, at);
        match parse_manifests("t", &yaml).unwrap().remove(0) {
            Manifest::TrustAnchor(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn cluster_anchors_add_to_the_files_and_a_bad_one_is_skipped() {
        let good = anchor(1, "a");
        let mut bad = anchor(2, "b");
        bad.spec.receipt_keys[0].key_id = good.spec.receipt_keys[0].key_id.clone();
        let roots = merged_roots(&[] as &[PathBuf], &[good.clone(), bad, good]).unwrap();
        assert_eq!(roots.keys.len(), 1);
        assert_eq!(roots.keys[0].role, tollgate_evidence::KeyRole::ReceiptCa);
    }
}
