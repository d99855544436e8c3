//! `LLMProvider` status: its credentials Secret (in the operator namespace)
//! and its TrustAnchor resolve, and its keys' health as the gateways report
//! it through the recorder.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tollgate_crds::LLMProvider;
use tollgate_crds::provider::{ProviderApi, ProviderKeyState, ProviderKeyStatus};

use super::conditions::{Desired, Status, with_ready};
use super::world::{KeyHealthObservation, World};

pub const CREDENTIALS_RESOLVED: &str = "CredentialsResolved";
pub const TRUST_RESOLVED: &str = "TrustResolved";
/// Informs, never gates `Ready`: a refused key among several is routed around.
pub const KEYS_HEALTHY: &str = "KeysHealthy";
/// The `KeysHealthy` reasons that come from a recorder answer (and so
/// outlive a restart until the next answer).
const ANSWERED_REASONS: &[&str] = &["KeysHealthy", "KeyRefused", "NoReports"];
/// The condition types this controller writes.
pub const CONDITION_TYPES: &[&str] = &[
    tollgate_crds::conditions::READY,
    CREDENTIALS_RESOLVED,
    TRUST_RESOLVED,
    KEYS_HEALTHY,
];

/// The conditions an `LLMProvider` should carry, `Ready` first.
pub fn conditions_for(provider: &LLMProvider, world: &World) -> Vec<Desired> {
    let mut conditions = vec![credentials(provider, world), trust(provider, world)];
    if let Some(keys) = keys_condition(provider, &world.key_health) {
        conditions.push(keys);
    }
    with_ready(conditions, "credentials and upstream trust resolve")
}

/// Each of the provider's `credentialsRef.keys` as the gateways' recent
/// reports show it (empty for a provider without stored keys).
pub fn key_statuses(
    provider: &LLMProvider,
    health: &KeyHealthObservation,
) -> Vec<ProviderKeyStatus> {
    let Some(creds) = &provider.spec.credentials_ref else {
        return Vec::new();
    };
    let Some(answer) = &health.answer else {
        // Nothing read yet (a new leader, or the recorder down since it
        // started): keep what the status shows for the keys still configured.
        return provider
            .status
            .iter()
            .flat_map(|s| &s.keys)
            .filter(|k| creds.keys.get(k.index as usize) == Some(&k.name))
            .cloned()
            .collect();
    };
    let name = provider.name_any();
    let reported = answer.providers.iter().find(|p| p.provider == name);
    creds
        .keys
        .iter()
        .zip(0u32..)
        .map(|(key_name, index)| {
            let summary = reported.and_then(|p| p.keys.iter().find(|k| k.index == index));
            let (state, gateways, refused_by) = match summary {
                None => (ProviderKeyState::Unknown, 0, 0),
                Some(k) if k.refused_by > 0 => {
                    (ProviderKeyState::Refused, k.gateways, k.refused_by)
                }
                Some(k) => (ProviderKeyState::Healthy, k.gateways, 0),
            };
            let refused = summary.filter(|k| k.refused_by > 0);
            ProviderKeyStatus {
                name: key_name.clone(),
                index,
                state,
                gateways,
                refused_by,
                refused_since: refused.and_then(|k| k.refused_since_ms).and_then(rfc3339),
                last_status: refused.and_then(|k| k.last_status),
            }
        })
        .collect()
}

fn rfc3339(ms: u64) -> Option<String> {
    let seconds = i64::try_from(ms / 1000).ok()?;
    Timestamp::from_second(seconds).ok().map(|t| t.to_string())
}

fn keys_condition(provider: &LLMProvider, health: &KeyHealthObservation) -> Option<Desired> {
    provider.spec.credentials_ref.as_ref()?;
    let Some(answer) = &health.answer else {
        // As the keys: a condition an earlier answer wrote stays as it is,
        // unless a key it may name is no longer configured.
        let shown_keys = provider.status.iter().flat_map(|s| &s.keys).count();
        let all_kept = key_statuses(provider, health).len() == shown_keys;
        let current = provider
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .find(|c| c.type_ == KEYS_HEALTHY)
            .filter(|c| ANSWERED_REASONS.contains(&c.reason.as_str()) && all_kept);
        if let Some(c) = current {
            let status = match c.status.as_str() {
                "True" => Status::True,
                "False" => Status::False,
                _ => Status::Unknown,
            };
            return Some(Desired::info(
                KEYS_HEALTHY,
                status,
                &c.reason,
                c.message.clone(),
            ));
        }
        return Some(match &health.error {
            None => Desired::info(
                KEYS_HEALTHY,
                Status::Unknown,
                "Pending",
                "key health has not been read from the recorder yet",
            ),
            Some(why) => Desired::info(
                KEYS_HEALTHY,
                Status::Unknown,
                "RecorderUnavailable",
                format!("key health comes from the recorder: {why}"),
            ),
        });
    };
    let stale = match &health.error {
        Some(e) => format!("; the last read of the recorder failed ({e}), so this is older"),
        None => String::new(),
    };
    let keys = key_statuses(provider, health);
    let refused: Vec<String> = keys
        .iter()
        .filter(|k| k.state == ProviderKeyState::Refused)
        .map(|k| {
            let status = k
                .last_status
                .map(|s| format!(", HTTP {s}"))
                .unwrap_or_default();
            let since = k
                .refused_since
                .as_deref()
                .map(|s| format!(" since {s}"))
                .unwrap_or_default();
            format!(
                "{} (index {}) by {} of {} gateway(s){status}{since}",
                k.name, k.index, k.refused_by, k.gateways
            )
        })
        .collect();
    if !refused.is_empty() {
        return Some(Desired::info(
            KEYS_HEALTHY,
            Status::False,
            "KeyRefused",
            format!(
                "the provider refused {}; those gateways route over the other keys and probe the refused ones{stale}",
                refused.join("; ")
            ),
        ));
    }
    if keys.iter().all(|k| k.state == ProviderKeyState::Unknown) {
        let cut = if answer.truncated {
            " (the recorder's answer was cut at its limit of provider keys)"
        } else {
            ""
        };
        return Some(Desired::info(
            KEYS_HEALTHY,
            Status::Unknown,
            "NoReports",
            format!("no gateway reported this provider's keys in the last two minutes{cut}{stale}"),
        ));
    }
    let gateways = keys.iter().map(|k| k.gateways).max().unwrap_or(0);
    Some(Desired::info(
        KEYS_HEALTHY,
        Status::True,
        "KeysHealthy",
        format!(
            "every reported key is in routing at the {gateways} gateway(s) that reported{stale}"
        ),
    ))
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

    fn key_health(keys: serde_json::Value) -> KeyHealthObservation {
        KeyHealthObservation {
            answer: Some(
                serde_json::from_value(serde_json::json!({
                    "window_ms": 120_000,
                    "providers": [{"provider": "openai", "keys": keys}]
                }))
                .unwrap(),
            ),
            error: None,
        }
    }

    fn keys_condition_of(world: &World) -> Desired {
        conditions_for(&provider(OPENAI), world)
            .into_iter()
            .find(|c| c.type_ == KEYS_HEALTHY)
            .unwrap()
    }

    #[test]
    fn key_health_from_the_gateways_reports_names_keys_never_values() {
        let mut world = good_world();
        world.key_health = key_health(serde_json::json!([
            {"index": 0, "gateways": 3, "refused_by": 0},
            {"index": 1, "gateways": 3, "refused_by": 2, "refused_since_ms": 1_796_000_000_500u64, "last_status": 401}
        ]));
        let keys = key_statuses(&provider(OPENAI), &world.key_health);
        assert_eq!(
            keys,
            [
                ProviderKeyStatus {
                    name: "key-a".into(),
                    index: 0,
                    state: ProviderKeyState::Healthy,
                    gateways: 3,
                    refused_by: 0,
                    refused_since: None,
                    last_status: None,
                },
                ProviderKeyStatus {
                    name: "key-b".into(),
                    index: 1,
                    state: ProviderKeyState::Refused,
                    gateways: 3,
                    refused_by: 2,
                    refused_since: Some("2026-11-30T00:53:20Z".into()),
                    last_status: Some(401),
                },
            ]
        );
        let condition = keys_condition_of(&world);
        assert_eq!(
            (condition.status, condition.reason.as_str()),
            (Status::False, "KeyRefused")
        );
        assert!(
            condition
                .message
                .contains("key-b (index 1) by 2 of 3 gateway(s), HTTP 401"),
            "{}",
            condition.message
        );
        // Informs only: Ready stays True with a key refused.
        let ready = conditions_for(&provider(OPENAI), &world).remove(0);
        assert_eq!(ready.status, Status::True);

        // All healthy; a key no gateway reported is Unknown, not healthy.
        world.key_health =
            key_health(serde_json::json!([{"index": 0, "gateways": 2, "refused_by": 0}]));
        let keys = key_statuses(&provider(OPENAI), &world.key_health);
        assert_eq!(
            (keys[0].state, keys[1].state),
            (ProviderKeyState::Healthy, ProviderKeyState::Unknown)
        );
        assert_eq!(keys_condition_of(&world).status, Status::True);

        // No reports at all, and no recorder: Unknown, with the reason.
        world.key_health = key_health(serde_json::json!([]));
        world.key_health.answer.as_mut().unwrap().providers.clear();
        assert_eq!(keys_condition_of(&world).reason, "NoReports");
        world.key_health = KeyHealthObservation {
            answer: None,
            error: Some("recorder down".into()),
        };
        let condition = keys_condition_of(&world);
        assert_eq!(
            (condition.status, condition.reason.as_str()),
            (Status::Unknown, "RecorderUnavailable")
        );
        assert!(condition.message.contains("recorder down"));
    }

    #[test]
    fn a_new_leader_keeps_the_key_health_the_status_shows_until_it_reads() {
        let mut shown = provider(OPENAI);
        let mut world = good_world();
        world.key_health = key_health(serde_json::json!([
            {"index": 0, "gateways": 3, "refused_by": 0},
            {"index": 1, "gateways": 3, "refused_by": 1, "last_status": 403}
        ]));
        let keys = key_statuses(&shown, &world.key_health);
        let condition = keys_condition_of(&world);
        shown.status = Some(tollgate_crds::provider::LLMProviderStatus {
            keys: keys.clone(),
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: KEYS_HEALTHY.into(),
                status: "False".into(),
                reason: condition.reason.clone(),
                message: condition.message.clone(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            }],
            observed_generation: None,
        });
        for health in [
            KeyHealthObservation::default(),
            KeyHealthObservation {
                answer: None,
                error: Some("recorder down".into()),
            },
        ] {
            assert_eq!(key_statuses(&shown, &health), keys);
            let kept = keys_condition(&shown, &health).unwrap();
            assert_eq!(
                (kept.status, kept.reason.as_str(), kept.message.as_str()),
                (Status::False, "KeyRefused", condition.message.as_str())
            );
        }
        // A key renamed in the spec drops out of what is kept, and the
        // condition that may name it goes back to waiting.
        let mut renamed = shown.clone();
        renamed.spec.credentials_ref.as_mut().unwrap().keys[1] = "key-c".into();
        assert_eq!(
            key_statuses(&renamed, &KeyHealthObservation::default()),
            keys[..1]
        );
        assert_eq!(
            keys_condition(&renamed, &KeyHealthObservation::default())
                .unwrap()
                .reason,
            "Pending"
        );
        // What this code wrote while waiting is not kept: the read's error shows.
        let mut waiting = shown.clone();
        waiting.status.as_mut().unwrap().conditions[0].reason = "Pending".into();
        let condition = keys_condition(
            &waiting,
            &KeyHealthObservation {
                answer: None,
                error: Some("recorder answered 403".into()),
            },
        )
        .unwrap();
        assert_eq!(
            (condition.status, condition.reason.as_str()),
            (Status::Unknown, "RecorderUnavailable")
        );
        assert!(condition.message.contains("403"), "{}", condition.message);
    }

    #[test]
    fn a_provider_without_stored_keys_has_no_key_health() {
        let mut world = good_world();
        world.key_health =
            key_health(serde_json::json!([{"index": 0, "gateways": 1, "refused_by": 1}]));
        let dry = provider(
            "apiVersion: tollgate.dev/v1alpha1\nkind: LLMProvider\nmetadata: {name: openai}\nspec: {api: dryRun, models: [{name: m}]}\n",
        );
        assert!(key_statuses(&dry, &world.key_health).is_empty());
        assert!(
            conditions_for(&dry, &world)
                .iter()
                .all(|c| c.type_ != KEYS_HEALTHY)
        );
    }

    #[test]
    fn a_provider_with_its_secret_and_anchor_is_ready() {
        let c = conditions_for(&provider(OPENAI), &good_world());
        assert_eq!(ready(&c).status, Status::True);
        assert!(
            c.iter().all(|d| d.status == Status::True || !d.gates_ready),
            "{c:?}"
        );
        let keys = c.iter().find(|d| d.type_ == KEYS_HEALTHY).unwrap();
        assert_eq!(
            (keys.status, keys.reason.as_str()),
            (Status::Unknown, "Pending")
        );
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
