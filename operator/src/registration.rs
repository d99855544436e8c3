//! Keeping clients' trust current when the CA bundle changes:
//! - out of cluster (`--webhook-url`): server-side apply of the whole
//!   Mutating and Validating webhook configurations that
//!   [`crate::webhooks::configurations`] builds;
//! - in cluster: a patch of only the `caBundle` of the configurations the
//!   Helm chart installs;
//! - everywhere: the ConfigMap `tollgate-control-ca` (key `ca.crt`) in every
//!   governed namespace, which gateways use to verify the control endpoint.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::cache::ClusterCache;
use crate::failures::Failures;
use crate::receipt_ca::FIELD_MANAGER;

/// Names of the webhook configurations.
pub const INJECTOR: &str = "tollgate-injector";
pub const VALIDATOR: &str = "tollgate-validator";
/// The ConfigMap gateways read the control endpoint's CA bundle from.
pub const CONTROL_CA_CONFIGMAP: &str = "tollgate-control-ca";

/// How webhook configurations are kept.
#[derive(Debug, Clone)]
pub enum WebhookRegistration {
    /// Apply both configurations, pointing at this URL (paths appended).
    Url {
        base_url: String,
        /// Appended to both names, for test suites sharing one cluster.
        name_suffix: String,
    },
    /// Patch only `caBundle` of the chart's configurations.
    CaBundleOnly,
    /// cert-manager's CA injector does it.
    None,
}

/// The webhook configurations for `base_url`, named with `suffix`.
pub fn named_configurations(
    base_url: &str,
    bundle: &str,
    operator_namespace: &str,
    suffix: &str,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    let (mut mutating, mut validating) = crate::webhooks::configurations(
        base_url.trim_end_matches('/'),
        bundle.as_bytes(),
        operator_namespace,
    );
    mutating.metadata.name = Some(format!("{INJECTOR}{suffix}"));
    validating.metadata.name = Some(format!("{VALIDATOR}{suffix}"));
    (mutating, validating)
}

async fn apply<K>(client: &Client, object: &K) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let mut value = serde_json::to_value(object).map_err(kube::Error::SerdeError)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("apiVersion".into(), K::api_version(&()).into());
        obj.insert("kind".into(), K::kind(&()).into());
        if let Some(meta) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            for k in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
            ] {
                meta.remove(k);
            }
        }
    }
    let api: Api<K> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await?;
    Ok(())
}

/// Sets `caBundle` on every webhook of configuration `name`, if it exists.
async fn patch_ca_bundles<K>(client: &Client, name: &str, bundle: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let Some(existing) = api.get_opt(name).await? else {
        tracing::warn!(
            name,
            "webhook configuration not found; is the chart installed?"
        );
        return Ok(());
    };
    let value = serde_json::to_value(&existing).map_err(kube::Error::SerdeError)?;
    let encoded = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        bundle.as_bytes(),
    );
    // Strategic merge: `webhooks` merges by name, so only caBundle changes.
    let webhooks: Vec<serde_json::Value> = value["webhooks"]
        .as_array()
        .map(|hooks| {
            hooks
                .iter()
                .filter_map(|h| h["name"].as_str())
                .map(|n| serde_json::json!({"name": n, "clientConfig": {"caBundle": encoded}}))
                .collect()
        })
        .unwrap_or_default();
    if webhooks.is_empty() {
        return Ok(());
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Strategic(serde_json::json!({ "webhooks": webhooks })),
    )
    .await?;
    Ok(())
}

/// Re-registers the webhooks whenever the bundle changes. Retries failures.
pub async fn keep_webhooks_registered(
    client: Client,
    registration: WebhookRegistration,
    operator_namespace: String,
    mut bundle: watch::Receiver<Option<String>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let current = bundle.borrow_and_update().clone();
        if let Some(pem) = current {
            let result = match &registration {
                WebhookRegistration::Url {
                    base_url,
                    name_suffix,
                } => {
                    let (m, v) =
                        named_configurations(base_url, &pem, &operator_namespace, name_suffix);
                    match apply(&client, &m).await {
                        Ok(()) => apply(&client, &v).await,
                        Err(e) => Err(e),
                    }
                }
                WebhookRegistration::CaBundleOnly => {
                    match patch_ca_bundles::<MutatingWebhookConfiguration>(&client, INJECTOR, &pem)
                        .await
                    {
                        Ok(()) => {
                            patch_ca_bundles::<ValidatingWebhookConfiguration>(
                                &client, VALIDATOR, &pem,
                            )
                            .await
                        }
                        Err(e) => Err(e),
                    }
                }
                WebhookRegistration::None => Ok(()),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "registering the webhooks; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            tracing::info!("webhook configurations carry the current CA bundle");
        }
        tokio::select! {
            changed = bundle.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

fn control_ca_configmap(namespace: &str, bundle: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONTROL_CA_CONFIGMAP,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": FIELD_MANAGER},
        },
        "data": {"ca.crt": bundle},
    })
}

/// The bundle gateways trust: the control endpoint's CAs, then the
/// recorder's, so one file verifies both.
fn gateway_trust_bundle(control: &str, recorder: Option<&str>) -> String {
    match recorder {
        Some(extra) if !extra.trim().is_empty() => {
            format!("{}\n{}\n", control.trim_end(), extra.trim())
        }
        _ => control.to_string(),
    }
}

/// Keeps `tollgate-control-ca` current in every governed namespace: the
/// control CA bundle plus, when given, the recorder's CA. Runs on the leader
/// only (the controllers prune the same ConfigMaps), until the bundle's
/// sender is gone.
pub async fn keep_control_ca_published(
    client: Client,
    cache: ClusterCache,
    mut bundle: watch::Receiver<Option<String>>,
    recorder_ca_pem: Option<String>,
    failures: Failures,
) {
    let mut changes = cache.subscribe();
    // Namespace → the bundle last written there.
    let mut written: HashMap<String, String> = HashMap::new();
    loop {
        let current = bundle
            .borrow_and_update()
            .clone()
            .map(|control| gateway_trust_bundle(&control, recorder_ca_pem.as_deref()));
        let mut failed = false;
        if let Some(pem) = current {
            let governed = cache.governed_namespaces();
            written.retain(|ns, _| governed.contains(ns));
            for ns in governed {
                if written.get(&ns) == Some(&pem) {
                    continue;
                }
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
                match api
                    .patch(
                        CONTROL_CA_CONFIGMAP,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(control_ca_configmap(&ns, &pem)),
                    )
                    .await
                {
                    Ok(_) => {
                        written.insert(ns, pem.clone());
                    }
                    Err(e) => {
                        failures.count("configmap_apply");
                        tracing::warn!(namespace = %ns, error = %e, "publishing {CONTROL_CA_CONFIGMAP}");
                        failed = true;
                    }
                }
            }
        }
        let retry = async {
            if failed {
                tokio::time::sleep(Duration::from_secs(2)).await;
            } else {
                futures::future::pending::<()>().await;
            }
        };
        tokio::select! {
            changed = bundle.changed() => if changed.is_err() { return },
            changed = changes.changed() => if changed.is_err() { return },
            () = retry => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_ca_configmap_holds_the_bundle() {
        let cm = control_ca_configmap("team-a", "PEM");
        assert_eq!(cm["metadata"]["name"], CONTROL_CA_CONFIGMAP);
        assert_eq!(cm["metadata"]["namespace"], "team-a");
        assert_eq!(cm["data"]["ca.crt"], "PEM");
    }

    #[test]
    fn the_gateway_bundle_appends_the_recorder_ca() {
        assert_eq!(gateway_trust_bundle("A\n", None), "A\n");
        assert_eq!(gateway_trust_bundle("A\n", Some("  ")), "A\n");
        assert_eq!(gateway_trust_bundle("A\n", Some("B\n")), "A\nB\n");
    }

    #[test]
    fn configurations_get_their_names() {
        let (m, v) = named_configurations("https://127.0.0.1:1/", "PEM", "ops", "-t1");
        assert_eq!(m.metadata.name.as_deref(), Some("tollgate-injector-t1"));
        assert_eq!(v.metadata.name.as_deref(), Some("tollgate-validator-t1"));
    }
}
