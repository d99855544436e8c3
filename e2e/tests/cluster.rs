//! The control plane itself: version, identity, ServiceAccount tokens and the
//! admission chain the other suites rely on.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;
use tollgate_e2e::webhook::{self, WebhookSpec, WebhookTarget};
use tollgate_e2e::{Kubectl, TestNamespace, client, eventually, repo_root};

fn pinned_k8s_version() -> Result<String> {
    let env = std::fs::read_to_string(repo_root().join("e2e/versions.env"))?;
    env.lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .map(|v| v.trim().to_owned())
        .context("K8S_VERSION missing from e2e/versions.env")
}

fn pod(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    })
}

#[tokio::test]
async fn e2e_cluster_runs_the_pinned_kubernetes_version() -> Result<()> {
    let client = client().await?;
    let pinned = format!("v{}", pinned_k8s_version()?);
    let info = client.apiserver_version().await?;
    assert_eq!(info.git_version, pinned);

    let kubectl = Kubectl::from_env()?;
    let out = kubectl.run(&["version", "-o", "json"]).await?;
    let versions: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        versions["clientVersion"]["gitVersion"], pinned,
        "TOLLGATE_KUBECTL must be the kubectl built for the same version"
    );
    assert_eq!(versions["serverVersion"]["gitVersion"], info.git_version);
    Ok(())
}

#[tokio::test]
async fn e2e_cluster_admin_is_system_masters() -> Result<()> {
    let kubectl = Kubectl::from_env()?;
    let out = kubectl.run(&["auth", "whoami", "-o", "json"]).await?;
    let review: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        review["status"]["userInfo"]["username"],
        "tollgate-e2e-admin"
    );
    let groups = review["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("system:masters"), "{groups}");
    Ok(())
}

/// The gateway's control endpoint depends on both: a pod-bound projected
/// token for audience `tollgate.dev/gateway`, checked with a TokenReview.
#[tokio::test]
async fn e2e_cluster_token_request_and_review() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "tokens").await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns.name());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["tollgate.dev/gateway".to_owned()],
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request("default", &PostParams::default(), &request)
        .await
        .context("TokenRequest (needs --service-account-signing-key-file)")?;
    let token = issued.status.context("TokenRequest has no status")?.token;

    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |audience: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.clone()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let status = reviews
        .create(&PostParams::default(), &review("tollgate.dev/gateway"))
        .await?
        .status
        .context("TokenReview has no status")?;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.context("no user")?;
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{}:default", ns.name()).as_str())
    );

    let wrong = reviews
        .create(&PostParams::default(), &review("someone-else"))
        .await?
        .status
        .context("TokenReview has no status")?;
    assert_ne!(
        wrong.authenticated,
        Some(true),
        "a token for another audience must not pass"
    );
    ns.delete().await
}

/// No controller-manager runs: the helper's `default` ServiceAccount is what
/// lets the ServiceAccount admission plugin admit pods at all.
#[tokio::test]
async fn admit_pods_need_the_namespace_service_account() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "pods").await?;
    let stored = ns.accepts(&pod("app")).await?;
    let spec = &stored.data["spec"];
    assert_eq!(spec["serviceAccountName"], "default");

    let mut other = pod("other-sa");
    other["spec"]["serviceAccountName"] = "missing".into();
    ns.rejects(&other, "serviceaccount \"missing\" not found")
        .await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    assert!(pods.get_opt("other-sa").await?.is_none());
    ns.delete().await
}

/// A registered webhook takes effect: with nothing listening on its port
/// and `failurePolicy: Fail`, pods in its namespace are refused (the
/// "webhook unreachable" row of the failure posture), and only there.
#[tokio::test]
async fn admit_unreachable_webhook_fails_closed() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "webhook").await?;
    let bystander = TestNamespace::create(&client, "bystander").await?;

    // A port nobody listens on: bind, read, release.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let ca = cluster_ca_pem()?;
    let spec = WebhookSpec::new(
        "pods.validate.e2e.tollgate.dev",
        WebhookTarget {
            port,
            path: "/validate/pods".to_owned(),
            ca_bundle_pem: ca,
        },
        ns.name(),
        webhook::rules("", &["pods"], &["CREATE"]),
    );
    webhook::register(&ns, &webhook::validating_configuration(&spec)?).await?;

    let mut n = 0;
    let message = eventually(Duration::from_secs(20), || {
        n += 1;
        let ns = &ns;
        async move {
            ns.rejects(&pod(&format!("blocked-{n}")), "failed calling webhook")
                .await
        }
    })
    .await?;
    assert!(
        message.contains("pods.validate.e2e.tollgate.dev"),
        "{message}"
    );
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");

    // Scoped by namespace selector: other namespaces are untouched.
    bystander.accepts(&pod("free")).await?;
    bystander.delete().await?;
    ns.delete().await
}

/// The cluster CA from the kubeconfig: a real PEM for a caBundle.
fn cluster_ca_pem() -> Result<Vec<u8>> {
    let path = tollgate_e2e::cluster::kubeconfig_path()?;
    let config = kube::config::Kubeconfig::read_from(path)?;
    let data = config
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.clone())
        .context("kubeconfig has no certificate-authority-data")?;
    // ByteString decodes base64, as it does for caBundle.
    let pem: k8s_openapi::ByteString = serde_json::from_value(json!(data))?;
    Ok(pem.0)
}
