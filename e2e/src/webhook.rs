//! Admission webhook configurations for webhooks the suites serve on
//! loopback (`https://127.0.0.1:PORT/path`, trusted through `caBundle`).
//!
//! Each configuration is scoped to one test namespace by a namespace
//! selector, so tests running in parallel never see each other's webhooks.
//! The API server picks up configurations asynchronously: register with
//! [`register`], then assert through [`crate::eventually`].

use anyhow::{Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::api::DynamicObject;
use serde::Serialize;

use crate::namespace::TestNamespace;

/// A webhook endpoint on loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub port: u16,
    /// Starts with `/`, e.g. `/validate/pods`.
    pub path: String,
    /// PEM of the CA that signed the webhook's serving certificate.
    pub ca_bundle_pem: Vec<u8>,
}

impl WebhookTarget {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}{}", self.port, self.path)
    }

    fn client_config(&self) -> Result<WebhookClientConfig> {
        if self.port == 0 {
            bail!("webhook port must not be 0");
        }
        if !self.path.starts_with('/') {
            bail!("webhook path {:?} must start with '/'", self.path);
        }
        let pem = String::from_utf8_lossy(&self.ca_bundle_pem);
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            bail!("caBundle must hold PEM certificates");
        }
        Ok(WebhookClientConfig {
            url: Some(self.url()),
            ca_bundle: Some(ByteString(self.ca_bundle_pem.clone())),
            service: None,
        })
    }
}

/// One webhook: where it is and what it intercepts.
#[derive(Debug, Clone)]
pub struct WebhookSpec {
    /// Fully qualified webhook name, e.g. `pods.validate.e2e.tollgate.dev`.
    pub name: String,
    pub target: WebhookTarget,
    pub rules: Vec<RuleWithOperations>,
    /// Only objects in this namespace (or the namespace itself) are sent.
    pub namespace: String,
    /// `Fail` (the default, as in the chart) or `Ignore`.
    pub failure_policy: String,
    pub timeout_seconds: i32,
}

impl WebhookSpec {
    /// A fail-closed webhook for `rules` in `namespace`.
    pub fn new(
        name: &str,
        target: WebhookTarget,
        namespace: &str,
        rules: Vec<RuleWithOperations>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            target,
            rules,
            namespace: namespace.to_owned(),
            failure_policy: "Fail".to_owned(),
            timeout_seconds: 5,
        }
    }

    fn namespace_selector(&self) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".to_owned(),
                operator: "In".to_owned(),
                values: Some(vec![self.namespace.clone()]),
            }]),
            match_labels: None,
        }
    }

    fn check(&self) -> Result<()> {
        if self.name.split('.').filter(|s| !s.is_empty()).count() < 3 {
            bail!(
                "webhook name {:?} must be fully qualified (three or more segments)",
                self.name
            );
        }
        if self.rules.is_empty() {
            bail!("webhook {} has no rules", self.name);
        }
        if !matches!(self.failure_policy.as_str(), "Fail" | "Ignore") {
            bail!("failurePolicy must be Fail or Ignore");
        }
        if !(1..=30).contains(&self.timeout_seconds) {
            bail!("timeoutSeconds must be between 1 and 30");
        }
        Ok(())
    }

    /// The configuration's name: one per webhook and namespace.
    pub fn configuration_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }
}

/// Rules for `resources` (e.g. `pods`, `pods/exec`) of `group` (`""` for
/// core), for the given operations.
pub fn rules(group: &str, resources: &[&str], operations: &[&str]) -> Vec<RuleWithOperations> {
    vec![RuleWithOperations {
        api_groups: Some(vec![group.to_owned()]),
        api_versions: Some(vec!["*".to_owned()]),
        operations: Some(operations.iter().map(|s| (*s).to_owned()).collect()),
        resources: Some(resources.iter().map(|s| (*s).to_owned()).collect()),
        scope: Some("Namespaced".to_owned()),
    }]
}

fn metadata(spec: &WebhookSpec) -> ObjectMeta {
    ObjectMeta {
        name: Some(spec.configuration_name()),
        labels: Some([(crate::namespace::E2E_LABEL.to_owned(), "true".to_owned())].into()),
        ..ObjectMeta::default()
    }
}

/// A ValidatingWebhookConfiguration calling `spec.target`.
pub fn validating_configuration(spec: &WebhookSpec) -> Result<ValidatingWebhookConfiguration> {
    spec.check()?;
    Ok(ValidatingWebhookConfiguration {
        metadata: metadata(spec),
        webhooks: Some(vec![ValidatingWebhook {
            name: spec.name.clone(),
            client_config: spec.target.client_config()?,
            rules: Some(spec.rules.clone()),
            namespace_selector: Some(spec.namespace_selector()),
            failure_policy: Some(spec.failure_policy.clone()),
            side_effects: "None".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            timeout_seconds: Some(spec.timeout_seconds),
            match_policy: Some("Equivalent".to_owned()),
            ..ValidatingWebhook::default()
        }]),
    })
}

/// A MutatingWebhookConfiguration calling `spec.target`.
pub fn mutating_configuration(spec: &WebhookSpec) -> Result<MutatingWebhookConfiguration> {
    spec.check()?;
    Ok(MutatingWebhookConfiguration {
        metadata: metadata(spec),
        webhooks: Some(vec![MutatingWebhook {
            name: spec.name.clone(),
            client_config: spec.target.client_config()?,
            rules: Some(spec.rules.clone()),
            namespace_selector: Some(spec.namespace_selector()),
            failure_policy: Some(spec.failure_policy.clone()),
            side_effects: "None".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            timeout_seconds: Some(spec.timeout_seconds),
            match_policy: Some("Equivalent".to_owned()),
            reinvocation_policy: Some("Never".to_owned()),
            ..MutatingWebhook::default()
        }]),
    })
}

/// Writes a webhook configuration; it is deleted with `ns`. The API server
/// applies it asynchronously, so wrap the first assertion that depends on it
/// in [`crate::eventually`].
pub async fn register(ns: &TestNamespace, configuration: &impl Serialize) -> Result<DynamicObject> {
    ns.accepts(configuration).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn spec() -> WebhookSpec {
        WebhookSpec::new(
            "pods.validate.e2e.tollgate.dev",
            WebhookTarget {
                port: 18443,
                path: "/validate/pods".to_owned(),
                ca_bundle_pem: PEM.to_vec(),
            },
            "crds-abc1",
            rules("", &["pods"], &["CREATE", "UPDATE"]),
        )
    }

    #[test]
    fn validating_configuration_calls_loopback_with_the_ca_bundle() {
        let cfg = validating_configuration(&spec()).unwrap();
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(json["kind"], "ValidatingWebhookConfiguration");
        assert_eq!(
            json["metadata"]["name"],
            "crds-abc1.pods.validate.e2e.tollgate.dev"
        );
        let hook = &json["webhooks"][0];
        assert_eq!(hook["name"], "pods.validate.e2e.tollgate.dev");
        assert_eq!(
            hook["clientConfig"]["url"],
            "https://127.0.0.1:18443/validate/pods"
        );
        assert!(hook["clientConfig"].get("service").is_none());
        // caBundle travels base64-encoded.
        assert_eq!(
            hook["clientConfig"]["caBundle"],
            "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="
        );
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["sideEffects"], "None");
        assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(hook["timeoutSeconds"], 5);
        assert_eq!(
            hook["namespaceSelector"],
            serde_json::json!({"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In", "values": ["crds-abc1"]
            }]})
        );
        assert_eq!(
            hook["rules"],
            serde_json::json!([{
                "apiGroups": [""], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                "resources": ["pods"], "scope": "Namespaced"
            }])
        );
    }

    #[test]
    fn mutating_configuration_never_reinvokes() {
        let cfg = mutating_configuration(&spec()).unwrap();
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(json["kind"], "MutatingWebhookConfiguration");
        assert_eq!(json["webhooks"][0]["reinvocationPolicy"], "Never");
        assert_eq!(
            json["webhooks"][0]["clientConfig"]["url"],
            "https://127.0.0.1:18443/validate/pods"
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = spec();
        s.target.path = "validate".to_owned();
        assert!(validating_configuration(&s).is_err());
        let mut s = spec();
        s.target.port = 0;
        assert!(validating_configuration(&s).is_err());
        let mut s = spec();
        s.target.ca_bundle_pem = b"not pem".to_vec();
        assert!(validating_configuration(&s).is_err());
        let mut s = spec();
        s.name = "short.name".to_owned();
        assert!(mutating_configuration(&s).is_err());
        let mut s = spec();
        s.rules.clear();
        assert!(mutating_configuration(&s).is_err());
        let mut s = spec();
        s.failure_policy = "Maybe".to_owned();
        assert!(validating_configuration(&s).is_err());
    }
}
