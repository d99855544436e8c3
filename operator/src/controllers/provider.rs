//! `LLMProvider` status: its credentials Secret (in the operator namespace)
//! and its TrustAnchor resolve.

use kube::ResourceExt;
use tollgate_crds::LLMProvider;
use tollgate_crds::provider::ProviderApi;

use super::conditions::{Desired, with_ready};
use super::world::World;

pub const CREDENTIALS_RESOLVED: &str = "CredentialsResolved";
pub const TRUST_RESOLVED: &str = "TrustResolved";
/// The condition types this controller writes.
pub const CONDITION_TYPES: &[&str] = &[
    tollgate_crds::conditions::READY,
    CREDENTIALS_RESOLVED,
    TRUST_RESOLVED,
];

/// The conditions an `LLMProvider` should carry, `Ready` first.
pub fn conditions_for(provider: &LLMProvider, world: &World) -> Vec<Desired> {
    with_ready(
        vec![credentials(provider, world), trust(provider, world)],
        "credentials and upstream trust resolve",
    )
}

fn credentials(provider: &LLMProvider, world: &World) -> Desired {
    match tollgate_crds::compile::web_identity_source(&provider.spec) {
        Ok(Some(source)) => {
            return Desired::gate(
                CREDENTIALS_RESOLVED,
                true,
                "WebIdentity",
                format!(
                    "each gateway assumes {} with its own ServiceAccount token (STS {}); no key is stored",
                    source.role_arn, source.sts_url
                ),
            );
        }
        Err(problem) => {
            return Desired::gate(CREDENTIALS_RESOLVED, false, "WebIdentityInvalid", problem);
        }
        Ok(None) => {}
    }
    match tollgate_crds::compile::google_identity_source(&provider.spec) {
        Ok(Some(source)) => {
            let how = match &source.impersonation_url {
                Some(_) => "then impersonates the service account",
                None => "and uses the federated token directly",
            };
            return Desired::gate(
                CREDENTIALS_RESOLVED,
                true,
                "WorkloadIdentityFederation",
                format!(
                    "each gateway exchanges its own ServiceAccount token with {} ({}) {how}; no key is stored",
                    source.audience, source.sts_url
                ),
            );
        }
        Err(problem) => {
            return Desired::gate(
                CREDENTIALS_RESOLVED,
                false,
                "WorkloadIdentityInvalid",
                problem,
            );
        }
        Ok(None) => {}
    }
    match tollgate_crds::compile::entra_identity_source(&provider.spec) {
        Ok(Some(source)) => {
            return Desired::gate(
                CREDENTIALS_RESOLVED,
                true,
                "EntraWorkloadIdentity",
                format!(
                    "each gateway presents its own ServiceAccount token to {} for application {}; no key is stored",
                    source.token_url, source.client_id
                ),
            );
        }
        Err(problem) => {
            return Desired::gate(
                CREDENTIALS_RESOLVED,
                false,
                "WorkloadIdentityInvalid",
                problem,
            );
        }
        Ok(None) => {}
    }
    let Some(creds) = &provider.spec.credentials_ref else {
        return if provider.spec.api == ProviderApi::DryRun {
            Desired::gate(
                CREDENTIALS_RESOLVED,
                true,
                "NotRequired",
                "the dry-run provider needs no credentials",
            )
        } else {
            Desired::gate(
                CREDENTIALS_RESOLVED,
                false,
                "CredentialsNotSet",
                "credentialsRef is required for this API",
            )
        };
    };
    let ns = &world.operator_namespace;
    let Some(keys) = world.secrets.get(&creds.secret_name) else {
        return Desired::gate(
            CREDENTIALS_RESOLVED,
            false,
            "SecretNotFound",
            format!(
                "Secret {ns}/{} does not exist; gateways get no key for this provider until it does",
                creds.secret_name
            ),
        );
    };
    let missing: Vec<&str> = creds
        .keys
        .iter()
        .filter(|k| !keys.contains(*k))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Desired::gate(
            CREDENTIALS_RESOLVED,
            false,
            "SecretKeyMissing",
            format!(
                "Secret {ns}/{} has no key {}",
                creds.secret_name,
                missing.join(", ")
            ),
        );
    }
    Desired::gate(
        CREDENTIALS_RESOLVED,
        true,
        "Resolved",
        format!(
            "Secret {ns}/{} holds all {} key(s)",
            creds.secret_name,
            creds.keys.len()
        ),
    )
}

fn trust(provider: &LLMProvider, world: &World) -> Desired {
    let Some(tls) = &provider.spec.tls else {
        return Desired::gate(
            TRUST_RESOLVED,
            true,
            "NotRequired",
            "no TrustAnchor referenced: system roots, no pins",
        );
    };
    let Some(anchor) = world.trust_anchor(&tls.trust_anchor_ref) else {
        return Desired::gate(
            TRUST_RESOLVED,
            false,
            "TrustAnchorNotFound",
            format!(
                "TrustAnchor {} does not exist; the provider is unusable until it does (pins are never skipped)",
                tls.trust_anchor_ref
            ),
        );
    };
    let uncovered: Vec<&str> = provider
        .spec
        .hosts
        .iter()
        .filter(|h| !anchor.spec.upstream.iter().any(|u| &u.host == *h))
        .map(String::as_str)
        .collect();
    if !uncovered.is_empty() {
        return Desired::gate(
            TRUST_RESOLVED,
            false,
            "HostNotCovered",
            format!(
                "TrustAnchor {} has no upstream entry for host {}",
                anchor.name_any(),
                uncovered.join(", ")
            ),
        );
    }
    Desired::gate(
        TRUST_RESOLVED,
        true,
        "Resolved",
        format!("TrustAnchor {} covers every host", anchor.name_any()),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::controllers::conditions::Status;
    use std::collections::BTreeSet;

    pub(crate) fn provider(yaml: &str) -> LLMProvider {
        serde_saphyr::from_str(yaml).unwrap()
    }

    pub(crate) const OPENAI: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: openai, generation: 3}
spec:
  api: openai
  baseURL: https://api.openai.com
  hosts: [api.openai.com]
  credentialsRef: {secretName: openai-keys, keys: [key-a, key-b]}
  models: [{name: gpt-4o-mini}]
  tls: {trustAnchorRef: upstream-pins}
"#;

    pub(crate) const PINS: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: TrustAnchor
metadata: {name: upstream-pins}
spec:
  upstream:
  - host: api.openai.com
    spkiPins: ["pMKAPAgcl1wdUPeybUi+y6ryX+mqFxUopgd/IByI4WQ="]
"#;

    pub(crate) fn good_world() -> World {
        let mut world = World {
            operator_namespace: "tollgate-system".into(),
            ..World::default()
        };
        world.secrets.insert(
            "openai-keys".into(),
            BTreeSet::from(["key-a".to_string(), "key-b".to_string()]),
        );
        world
            .trust_anchors
            .push(serde_saphyr::from_str(PINS).unwrap());
        world.providers.push(provider(OPENAI));
        world
    }

    fn ready(conditions: &[Desired]) -> &Desired {
        assert_eq!(conditions[0].type_, "Ready");
        &conditions[0]
    }

    #[test]
    fn a_provider_with_its_secret_and_anchor_is_ready() {
        let c = conditions_for(&provider(OPENAI), &good_world());
        assert_eq!(ready(&c).status, Status::True);
        assert!(c.iter().all(|d| d.status == Status::True), "{c:?}");
    }

    #[test]
    fn a_missing_secret_is_secret_not_found() {
        let mut world = good_world();
        world.secrets.clear();
        let c = conditions_for(&provider(OPENAI), &world);
        assert_eq!(ready(&c).status, Status::False);
        assert_eq!(ready(&c).reason, "SecretNotFound");
        assert!(ready(&c).message.contains("tollgate-system/openai-keys"));
    }

    #[test]
    fn a_missing_key_is_secret_key_missing_and_names_the_key() {
        let mut world = good_world();
        world
            .secrets
            .insert("openai-keys".into(), BTreeSet::from(["key-a".to_string()]));
        let c = conditions_for(&provider(OPENAI), &world);
        assert_eq!(ready(&c).reason, "SecretKeyMissing");
        let creds = c.iter().find(|d| d.type_ == CREDENTIALS_RESOLVED).unwrap();
        assert_eq!(creds.status, Status::False);
        assert!(creds.message.contains("key-b"), "{}", creds.message);
        assert!(!creds.message.contains("key-a,"), "{}", creds.message);
    }

    #[test]
    fn a_missing_trust_anchor_or_uncovered_host_is_reported() {
        let mut world = good_world();
        world.trust_anchors.clear();
        let c = conditions_for(&provider(OPENAI), &world);
        assert_eq!(ready(&c).reason, "TrustAnchorNotFound");

        let mut other_host = good_world();
        other_host.trust_anchors[0].spec.upstream[0].host = "example.org".into();
        let c = conditions_for(&provider(OPENAI), &other_host);
        assert_eq!(ready(&c).reason, "HostNotCovered");
        assert!(ready(&c).message.contains("api.openai.com"));
    }

    #[test]
    fn a_web_identity_provider_needs_no_secret() {
        let bedrock = provider(
            r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: bedrock}
spec:
  api: bedrock
  aws: {region: us-east-1, webIdentity: {roleArn: "arn:aws:iam::123456789012:role/bedrock"}}
  baseURL: https://bedrock-runtime.us-east-1.amazonaws.com
  hosts: [bedrock-runtime.us-east-1.amazonaws.com, sts.us-east-1.amazonaws.com]
  models: [{name: "anthropic.claude-3-5-haiku-20241022-v1:0"}]
"#,
        );
        let c = conditions_for(&bedrock, &World::default());
        let creds = c.iter().find(|d| d.type_ == CREDENTIALS_RESOLVED).unwrap();
        assert_eq!(creds.status, Status::True);
        assert_eq!(creds.reason, "WebIdentity");
        assert!(creds.message.contains("role/bedrock"), "{}", creds.message);
        // STS on a host the provider may not dial: not resolved.
        let mut unlisted = bedrock.clone();
        unlisted.spec.hosts.retain(|h| !h.starts_with("sts."));
        let c = conditions_for(&unlisted, &World::default());
        let creds = c.iter().find(|d| d.type_ == CREDENTIALS_RESOLVED).unwrap();
        assert_eq!(creds.status, Status::False);
        assert_eq!(creds.reason, "WebIdentityInvalid");
        assert!(
            creds.message.contains("listed in hosts"),
            "{}",
            creds.message
        );
    }

    #[test]
    fn a_workload_identity_provider_needs_no_secret() {
        let vertex = provider(
            r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: vertex}
spec:
  api: vertex
  gcp:
    project: my-ml-project
    location: us-central1
    workloadIdentity:
      audience: //iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/pool/providers/cluster
      serviceAccount: vertex@my-ml-project.iam.gserviceaccount.com
  baseURL: https://us-central1-aiplatform.googleapis.com
  hosts: [us-central1-aiplatform.googleapis.com, sts.googleapis.com, iamcredentials.googleapis.com]
  models: [{name: gemini-2.5-flash}]
"#,
        );
        let c = conditions_for(&vertex, &World::default());
        let creds = c.iter().find(|d| d.type_ == CREDENTIALS_RESOLVED).unwrap();
        assert_eq!(creds.status, Status::True);
        assert_eq!(creds.reason, "WorkloadIdentityFederation");
        assert!(creds.message.contains("impersonates"), "{}", creds.message);
        let mut unlisted = vertex.clone();
        unlisted
            .spec
            .hosts
            .retain(|h| !h.starts_with("iamcredentials."));
        let c = conditions_for(&unlisted, &World::default());
        let creds = c.iter().find(|d| d.type_ == CREDENTIALS_RESOLVED).unwrap();
        assert_eq!(creds.status, Status::False);
        assert_eq!(creds.reason, "WorkloadIdentityInvalid");
    }

    #[test]
    fn an_entra_workload_identity_provider_needs_no_secret() {
        let azure = provider(
            r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: azure}
spec:
  api: azureOpenai
  azure:
    apiVersion: "2024-10-21"
    workloadIdentity: {tenantID: 72f988bf-86f1-41af-91ab-2d7cd011db47, clientID: 5b1a7b2e-3d4c-4f6a-9e8b-0c1d2e3f4a5b}
  baseURL: https://res.openai.azure.com
  hosts: [res.openai.azure.com, login.microsoftonline.com]
  models: [{name: gpt-4o}]
"#,
        );
        let c = conditions_for(&azure, &World::default());
        let creds = c.iter().find(|d| d.type_ == CREDENTIALS_RESOLVED).unwrap();
        assert_eq!(creds.status, Status::True);
        assert_eq!(creds.reason, "EntraWorkloadIdentity");
        assert!(creds.message.contains("5b1a7b2e"), "{}", creds.message);
        let mut unlisted = azure.clone();
        unlisted.spec.hosts.retain(|h| !h.starts_with("login."));
        let c = conditions_for(&unlisted, &World::default());
        let creds = c.iter().find(|d| d.type_ == CREDENTIALS_RESOLVED).unwrap();
        assert_eq!(creds.reason, "WorkloadIdentityInvalid");
    }

    #[test]
    fn the_dry_run_provider_needs_nothing() {
        let dry = provider(
            r#"
apiVersion: tollgate.dev/v1alpha1
kind: LLMProvider
metadata: {name: dry}
spec:
  api: dryRun
  models: [{name: fake}]
"#,
        );
        let c = conditions_for(&dry, &World::default());
        assert_eq!(ready(&c).status, Status::True);
        assert_eq!(c[1].reason, "NotRequired");
    }
}
