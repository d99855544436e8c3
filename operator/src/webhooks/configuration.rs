//! The Mutating and Validating webhook configurations: which requests the
//! API server sends to which path, and how it reaches the operator.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use tollgate_admission::{ENABLED, LABEL_INJECT, Webhook};

/// Name of the MutatingWebhookConfiguration.
pub const INJECTOR: &str = "tollgate-injector";
/// Name of the ValidatingWebhookConfiguration.
pub const VALIDATOR: &str = "tollgate-validator";
/// Seconds the API server waits for a review; small, since failure is closed.
pub const TIMEOUT_SECONDS: i32 = 5;

fn rule(
    groups: &[&str],
    versions: &[&str],
    resources: &[&str],
    ops: &[&str],
) -> RuleWithOperations {
    let strings = |s: &[&str]| Some(s.iter().map(|x| x.to_string()).collect());
    RuleWithOperations {
        api_groups: strings(groups),
        api_versions: strings(versions),
        resources: strings(resources),
        operations: strings(ops),
        scope: Some("Namespaced".into()),
    }
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    }
}

/// Governed namespaces, never the operator's own.
fn governed_namespaces(operator_namespace: &str) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![
            requirement(LABEL_INJECT, "In", &[ENABLED]),
            requirement(
                "kubernetes.io/metadata.name",
                "NotIn",
                &[operator_namespace],
            ),
        ]),
        match_labels: None,
    }
}

/// `https://NAME.NS.svc[:PORT]` becomes a service reference (the API server
/// cannot always resolve cluster DNS); anything else stays a URL.
fn client_config(base_url: &str, path: &str, ca_bundle_pem: &[u8]) -> WebhookClientConfig {
    let base_url = base_url.trim_end_matches('/');
    let service = base_url.strip_prefix("https://").and_then(|rest| {
        let (host, port) = match rest.split_once(':') {
            Some((host, port)) => (host, port.parse::<i32>().ok()?),
            None => (rest, 443),
        };
        let mut parts = host.split('.');
        let (name, namespace, svc) = (parts.next()?, parts.next()?, parts.next()?);
        (svc == "svc" && parts.next().is_none()).then(|| ServiceReference {
            name: name.into(),
            namespace: namespace.into(),
            path: Some(path.into()),
            port: Some(port),
        })
    });
    let ca_bundle = Some(ByteString(ca_bundle_pem.to_vec()));
    match service {
        Some(service) => WebhookClientConfig {
            service: Some(service),
            url: None,
            ca_bundle,
        },
        None => WebhookClientConfig {
            url: Some(format!("{base_url}{path}")),
            service: None,
            ca_bundle,
        },
    }
}

fn validating(
    name: &str,
    webhook: Webhook,
    rules: Vec<RuleWithOperations>,
    base_url: &str,
    ca_bundle_pem: &[u8],
    operator_namespace: &str,
) -> ValidatingWebhook {
    ValidatingWebhook {
        name: name.into(),
        client_config: client_config(base_url, webhook.path(), ca_bundle_pem),
        rules: Some(rules),
        namespace_selector: Some(governed_namespaces(operator_namespace)),
        object_selector: None,
        match_policy: Some("Equivalent".into()),
        failure_policy: Some("Fail".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(TIMEOUT_SECONDS),
        admission_review_versions: vec!["v1".into()],
        match_conditions: None,
    }
}

/// The configurations for webhooks served at `base_url` (paths appended),
/// trusting `ca_bundle_pem`, skipping `operator_namespace`.
pub fn configurations(
    base_url: &str,
    ca_bundle_pem: &[u8],
    operator_namespace: &str,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    let mutating = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(INJECTOR.into()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "inject.pods.tollgate.dev".into(),
            client_config: client_config(base_url, Webhook::MutatePods.path(), ca_bundle_pem),
            rules: Some(vec![rule(&[""], &["v1"], &["pods"], &["CREATE"])]),
            namespace_selector: Some(governed_namespaces(operator_namespace)),
            object_selector: None,
            match_policy: Some("Equivalent".into()),
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(TIMEOUT_SECONDS),
            admission_review_versions: vec!["v1".into()],
            // Injection is idempotent: running again after other webhooks
            // hardens containers they added.
            reinvocation_policy: Some("IfNeeded".into()),
            match_conditions: None,
        }]),
    };
    let mut namespaces = validating(
        "namespaces.validate.tollgate.dev",
        Webhook::ValidateNamespaces,
        vec![rule(&[""], &["v1"], &["namespaces"], &["UPDATE"])],
        base_url,
        ca_bundle_pem,
        operator_namespace,
    );
    // The object selector sees the old object too, so removing the label
    // still reaches the webhook; a namespace selector would not.
    namespaces.object_selector = Some(LabelSelector {
        match_expressions: Some(vec![requirement(LABEL_INJECT, "In", &[ENABLED])]),
        match_labels: None,
    });
    namespaces.namespace_selector = Some(LabelSelector {
        match_expressions: Some(vec![requirement(
            "kubernetes.io/metadata.name",
            "NotIn",
            &[operator_namespace],
        )]),
        match_labels: None,
    });
    if let Some(rules) = namespaces.rules.as_mut() {
        for r in rules {
            r.scope = Some("Cluster".into());
        }
    }
    let validating_hooks = vec![
        validating(
            "pods.validate.tollgate.dev",
            Webhook::ValidatePods,
            vec![rule(&[""], &["v1"], &["pods"], &["CREATE", "UPDATE"])],
            base_url,
            ca_bundle_pem,
            operator_namespace,
        ),
        validating(
            "pods-ephemeral.validate.tollgate.dev",
            Webhook::ValidatePodsEphemeral,
            vec![rule(
                &[""],
                &["v1"],
                &["pods/ephemeralcontainers"],
                &["UPDATE"],
            )],
            base_url,
            ca_bundle_pem,
            operator_namespace,
        ),
        validating(
            "pods-connect.validate.tollgate.dev",
            Webhook::ValidatePodsConnect,
            vec![rule(
                &[""],
                &["v1"],
                &["pods/exec", "pods/attach"],
                &["CONNECT"],
            )],
            base_url,
            ca_bundle_pem,
            operator_namespace,
        ),
        namespaces,
        validating(
            "workloads.validate.tollgate.dev",
            Webhook::ValidateWorkloads,
            vec![
                rule(
                    &["apps"],
                    &["v1"],
                    &["deployments", "statefulsets", "daemonsets", "replicasets"],
                    &["CREATE", "UPDATE"],
                ),
                rule(
                    &["batch"],
                    &["v1"],
                    &["jobs", "cronjobs"],
                    &["CREATE", "UPDATE"],
                ),
            ],
            base_url,
            ca_bundle_pem,
            operator_namespace,
        ),
    ];
    let validating = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(VALIDATOR.into()),
            ..Default::default()
        },
        webhooks: Some(validating_hooks),
    };
    (mutating, validating)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const CA: &[u8] = b"-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n";

    fn golden(name: &str, text: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/webhooks")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, text).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", path.display()));
        if want != text {
            let diff = similar::TextDiff::from_lines(want.as_str(), text)
                .unified_diff()
                .header("golden", "actual")
                .to_string();
            panic!("{} drifted:\n{diff}", path.display());
        }
    }

    #[test]
    fn out_of_cluster_configurations_match_golden() {
        let (m, v) = configurations("https://127.0.0.1:8443/", CA, "tollgate-system");
        golden("mutating-url.yaml", &serde_saphyr::to_string(&m).unwrap());
        golden("validating-url.yaml", &serde_saphyr::to_string(&v).unwrap());
    }

    #[test]
    fn in_cluster_configurations_use_the_service() {
        let (m, v) = configurations(
            "https://tollgate-operator.tollgate-system.svc:8443",
            CA,
            "tollgate-system",
        );
        golden(
            "mutating-service.yaml",
            &serde_saphyr::to_string(&m).unwrap(),
        );
        let hooks = v.webhooks.unwrap();
        assert_eq!(hooks.len(), 5);
        for hook in &hooks {
            let service = hook.client_config.service.as_ref().unwrap();
            assert_eq!(service.name, "tollgate-operator");
            assert_eq!(service.port, Some(8443));
            assert!(hook.client_config.url.is_none());
            assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
            assert_eq!(hook.match_policy.as_deref(), Some("Equivalent"));
            assert_eq!(hook.timeout_seconds, Some(TIMEOUT_SECONDS));
        }
        let paths: Vec<&str> = hooks
            .iter()
            .filter_map(|h| h.client_config.service.as_ref()?.path.as_deref())
            .collect();
        assert_eq!(
            paths,
            vec![
                "/validate/pods",
                "/validate/pods-ephemeral",
                "/validate/pods-connect",
                "/validate/namespaces",
                "/validate/workloads"
            ]
        );
    }
}
