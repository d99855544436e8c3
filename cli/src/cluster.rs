//! Reaching a cluster's Tollgate with nothing but the kubeconfig: the recorder's
//! usage, bundle and trust-anchor endpoints are served through the API server's
//! aggregation layer (`APIService v1alpha1.usage.tollgate.dev`), so the API server
//! authenticates the caller as usual and the recorder authorizes that identity
//! with `SubjectAccessReview`. No port-forward or token is made by hand.

use anyhow::{Context, bail};

/// The aggregated API's base path (the recorder's definition).
pub use tollgate_recorder::http::API_BASE;

/// A client from the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or, inside a
/// pod, the in-cluster credentials.
pub async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("no kubeconfig to reach the cluster (set KUBECONFIG, or use --local / --recorder)")
}

/// `GET path` through the API server; a clear error when Tollgate's API is not there.
pub async fn get(client: &kube::Client, path: &str) -> anyhow::Result<String> {
    let request = http::Request::get(path)
        .body(Vec::new())
        .context("building the request")?;
    match client.request_text(request).await {
        Ok(body) => Ok(body),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 503 => bail!(
            "the API server answered {} for {path}: is Tollgate installed and its recorder \
             running? (kubectl get apiservice v1alpha1.usage.tollgate.dev): {}",
            status.code,
            status.message
        ),
        Err(kube::Error::Api(status)) if status.code == 403 => bail!(
            "forbidden: {} (namespace admins read their own namespaces with -n NAMESPACE; \
             every namespace and bundle exports need the ClusterRole tollgate-auditor)",
            status.message
        ),
        Err(kube::Error::Api(status)) => bail!(
            "the API server answered {} for {path}: {}",
            status.code,
            status.message
        ),
        Err(e) => Err(e).with_context(|| format!("GET {path}")),
    }
}
