//! `EgressPolicy` status: its providers exist and are ready, it compiles, and
//! the policy hash of its namespace's gateway config. The audit sweep owns
//! `nonCompliantPods`, `lastAuditTime` and the `Audited` condition; this
//! controller never writes them.

use kube::ResourceExt;
use tollgate_crds::EgressPolicy;
use tollgate_crds::policy::PolicyMode;

use super::conditions::{Desired, Status, with_ready};
use super::provider;
use super::world::{INJECT_LABEL, World};

pub const PROVIDERS_RESOLVED: &str = "ProvidersResolved";
pub const COMPILED: &str = "Compiled";
pub const NAMESPACE_GOVERNED: &str = "NamespaceGoverned";
/// The condition types this controller writes.
pub const CONDITION_TYPES: &[&str] = &[
    tollgate_crds::conditions::READY,
    PROVIDERS_RESOLVED,
    COMPILED,
    NAMESPACE_GOVERNED,
];

/// What this controller writes into an `EgressPolicy` status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyOutcome {
    pub conditions: Vec<Desired>,
    /// The policy hash of the namespace's compiled gateway config.
    pub policy_hash: String,
}

/// The conditions and policy hash of an `EgressPolicy`.
pub fn status_for(policy: &EgressPolicy, world: &World) -> PolicyOutcome {
    let namespace = policy.namespace().unwrap_or_default();
    let compiled = world.compile(&namespace);
    let object = format!("EgressPolicy/{namespace}/{}", policy.name_any());

    let mut missing = Vec::new();
    let mut not_ready = Vec::new();
    for allow in &policy.spec.allow {
        match world.provider(&allow.provider_ref) {
            None => missing.push(allow.provider_ref.as_str()),
            Some(p) => {
                let ready = &provider::conditions_for(p, world)[0];
                if ready.status != Status::True {
                    not_ready.push(format!("{} ({})", allow.provider_ref, ready.reason));
                }
            }
        }
    }
    let providers = if !missing.is_empty() {
        Desired::gate(
            PROVIDERS_RESOLVED,
            false,
            "ProviderNotFound",
            format!(
                "LLMProvider {} does not exist; its models are not allowed until it does",
                missing.join(", ")
            ),
        )
    } else if !not_ready.is_empty() {
        Desired::gate(
            PROVIDERS_RESOLVED,
            false,
            "ProviderNotReady",
            format!("LLMProvider {} is not ready", not_ready.join(", ")),
        )
    } else {
        Desired::gate(
            PROVIDERS_RESOLVED,
            true,
            "Resolved",
            format!("{} provider(s) resolve", policy.spec.allow.len()),
        )
    };

    // Provider problems are reported above (and on the provider itself); what
    // is left is about this policy's own spec.
    let own_problem = compiled
        .problems
        .iter()
        .find(|p| p.object == object && p.reason != "ProviderNotFound");
    let hash = &compiled.config.policy_hash;
    let short = hash.get(..12).unwrap_or(hash);
    let compiled_condition = match (own_problem, policy.spec.mode) {
        (Some(problem), _) => Desired::gate(COMPILED, false, problem.reason, &problem.message),
        (None, PolicyMode::Disabled) => Desired::gate(
            COMPILED,
            true,
            "PolicyDisabled",
            "mode is disabled: the policy is left out, and gateways refuse the LLM traffic of pods no policy allows",
        ),
        (None, _) => Desired::gate(
            COMPILED,
            true,
            "Compiled",
            format!(
                "compiled into the gateway config of namespace {namespace} (policy hash {short})"
            ),
        ),
    };

    let governed = if world.is_governed(&namespace) {
        Desired::info(
            NAMESPACE_GOVERNED,
            Status::True,
            "InjectionEnabled",
            format!("namespace {namespace} is labelled {INJECT_LABEL}=enabled"),
        )
    } else {
        Desired::info(
            NAMESPACE_GOVERNED,
            Status::False,
            "NamespaceNotGoverned",
            format!(
                "namespace {namespace} is not labelled {INJECT_LABEL}=enabled: no gateway is injected, so this policy has no effect yet"
            ),
        )
    };

    PolicyOutcome {
        conditions: with_ready(
            vec![providers, compiled_condition, governed],
            "providers resolve and the policy compiles",
        ),
        policy_hash: hash.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::provider::tests::good_world;
    use std::collections::BTreeMap;

    fn policy(yaml: &str) -> EgressPolicy {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const CHAT: &str = r#"
apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: chat-apps, namespace: team-a, generation: 2}
spec:
  podSelector: {matchLabels: {app: chat}}
  allow:
  - providerRef: openai
    models: ["gpt-4o-mini"]
"#;

    fn world_with(p: &EgressPolicy) -> World {
        let mut world = good_world();
        world.policies.push(p.clone());
        world.namespaces.insert(
            "team-a".into(),
            BTreeMap::from([(INJECT_LABEL.to_string(), "enabled".to_string())]),
        );
        world
    }

    #[test]
    fn a_resolving_policy_is_ready_with_the_namespace_hash() {
        let p = policy(CHAT);
        let world = world_with(&p);
        let out = status_for(&p, &world);
        assert_eq!(
            out.conditions[0].status,
            Status::True,
            "{:?}",
            out.conditions
        );
        assert_eq!(out.policy_hash, world.compile("team-a").config.policy_hash);
        assert_eq!(out.policy_hash.len(), 64);
    }

    #[test]
    fn a_missing_provider_is_provider_not_found() {
        let p = policy(CHAT);
        let mut world = world_with(&p);
        world.providers.clear();
        let out = status_for(&p, &world);
        assert_eq!(out.conditions[0].status, Status::False);
        assert_eq!(out.conditions[0].reason, "ProviderNotFound");
        assert!(out.conditions[0].message.contains("openai"));
        // The rest of the policy still compiles (without the provider's routes).
        let compiled = out.conditions.iter().find(|c| c.type_ == COMPILED).unwrap();
        assert_eq!(compiled.status, Status::True);
    }

    #[test]
    fn a_provider_that_is_not_ready_makes_the_policy_not_ready() {
        let p = policy(CHAT);
        let mut world = world_with(&p);
        world.secrets.clear();
        let out = status_for(&p, &world);
        assert_eq!(out.conditions[0].reason, "ProviderNotReady");
        assert!(out.conditions[0].message.contains("SecretNotFound"));
    }

    #[test]
    fn a_bad_selector_fails_compilation() {
        let p = policy(
            r#"
apiVersion: tollgate.dev/v1alpha1
kind: EgressPolicy
metadata: {name: odd, namespace: team-a}
spec:
  podSelector:
    matchExpressions: [{key: app, operator: Near, values: [x]}]
"#,
        );
        let out = status_for(&p, &world_with(&p));
        assert_eq!(out.conditions[0].reason, "InvalidSelector");
    }

    #[test]
    fn an_ungoverned_namespace_is_reported_but_does_not_gate_ready() {
        let p = policy(CHAT);
        let mut world = world_with(&p);
        world.namespaces.clear();
        let out = status_for(&p, &world);
        assert_eq!(out.conditions[0].status, Status::True);
        let governed = out
            .conditions
            .iter()
            .find(|c| c.type_ == NAMESPACE_GOVERNED)
            .unwrap();
        assert_eq!(governed.status, Status::False);
        assert_eq!(governed.reason, "NamespaceNotGoverned");
    }

    #[test]
    fn the_hash_changes_when_a_referenced_provider_changes() {
        let p = policy(CHAT);
        let world = world_with(&p);
        let before = status_for(&p, &world).policy_hash;
        let mut changed = world.clone();
        changed.providers[0].spec.timeouts.connect_millis = 999;
        assert_ne!(before, status_for(&p, &changed).policy_hash);
    }
}
