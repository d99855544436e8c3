//! What admission knows about a namespace: whether it is governed and the
//! EgressPolicies in it. The operator answers from its reflector caches; the
//! CLI and the tests answer from manifests ([`StaticPolicyView`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};
use tollgate_crds::EgressPolicy;
use tollgate_crds::policy::{EgressRule, PolicyMode};
use tollgate_wire::config::Selector;

/// The part of an `EgressPolicy` admission needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    pub name: String,
    pub mode: PolicyMode,
    /// `None` when the policy's selector is malformed: it then selects no pod,
    /// so it can neither grant an opt-out nor open egress.
    pub selector: Option<Selector>,
    pub allow_opt_out: bool,
    #[serde(default)]
    pub egress: Vec<EgressRule>,
}

impl PolicySummary {
    /// The summary of a stored policy.
    pub fn of(policy: &EgressPolicy) -> Self {
        Self {
            name: policy.metadata.name.clone().unwrap_or_default(),
            mode: policy.spec.mode,
            selector: policy
                .spec
                .pod_selector
                .as_ref()
                .map_or(Some(Selector::default()), selector_of),
            allow_opt_out: policy.spec.injection.allow_opt_out,
            egress: policy.spec.egress.clone(),
        }
    }

    /// Whether the policy selects a pod with these labels.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

/// A Kubernetes label selector as a [`Selector`]; `None` if an operator is
/// unknown (the API server's schema normally prevents that).
pub fn selector_of(selector: &LabelSelector) -> Option<Selector> {
    tollgate_crds::compile::convert_selector(selector).ok()
}

/// What the webhook shell knows from its caches.
pub trait PolicyView {
    /// Whether the namespace carries `tollgate.dev/inject=enabled`. A shell
    /// that does not know the namespace must answer `true`: the API server
    /// only calls the pod webhooks for governed namespaces, so not knowing
    /// means the cache lags, and failing closed is right.
    fn namespace_governed(&self, namespace: &str) -> bool;
    /// The EgressPolicies in the namespace, in name order.
    fn policies(&self, namespace: &str) -> Vec<PolicySummary>;
}

/// One namespace as admission sees it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceView {
    pub name: String,
    pub governed: bool,
    #[serde(default)]
    pub policies: Vec<PolicySummary>,
}

impl NamespaceView {
    /// Asks `view` about `namespace`.
    pub fn from_view(view: &dyn PolicyView, namespace: &str) -> Self {
        Self {
            name: namespace.to_string(),
            governed: view.namespace_governed(namespace),
            policies: view.policies(namespace),
        }
    }

    /// The policies selecting a pod with these labels.
    pub fn selecting<'a>(
        &'a self,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a PolicySummary> + 'a {
        self.policies.iter().filter(move |p| p.selects(labels))
    }

    /// An opt-out is permitted when at least one policy selects the pod and
    /// every policy selecting it allows opt-out: when policies disagree, the
    /// stricter one wins.
    pub fn opt_out_permitted(&self, labels: &BTreeMap<String, String>) -> bool {
        let mut any = false;
        for p in self.selecting(labels) {
            if !p.allow_opt_out {
                return false;
            }
            any = true;
        }
        any
    }

    /// Whether any policy in `enforce` mode exists in the namespace.
    pub fn has_enforcing_policy(&self) -> bool {
        self.policies.iter().any(|p| p.mode == PolicyMode::Enforce)
    }

    /// The `--allow` entries for init-network: the egress rules of the
    /// non-disabled policies selecting the pod, as `CIDR` or
    /// `CIDR=PORT,PORT`, sorted and deduplicated.
    pub fn allowed_egress(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        let mut entries: Vec<String> = self
            .selecting(labels)
            .filter(|p| p.mode != PolicyMode::Disabled)
            .flat_map(|p| p.egress.iter())
            .map(|rule| {
                if rule.ports.is_empty() {
                    rule.cidr.clone()
                } else {
                    let mut ports = rule.ports.clone();
                    ports.sort_unstable();
                    ports.dedup();
                    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                    format!("{}={}", rule.cidr, ports.join(","))
                }
            })
            .collect();
        entries.sort();
        entries.dedup();
        entries
    }
}

/// A fixed view, for the CLI (from manifests) and tests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticPolicyView {
    /// Namespaces known to be governed.
    #[serde(default)]
    pub governed: Vec<String>,
    /// Namespaces known NOT to be governed; any other is taken as governed.
    #[serde(default)]
    pub ungoverned: Vec<String>,
    /// Policies per namespace.
    #[serde(default)]
    pub policies: BTreeMap<String, Vec<PolicySummary>>,
}

impl PolicyView for StaticPolicyView {
    fn namespace_governed(&self, namespace: &str) -> bool {
        self.governed.iter().any(|n| n == namespace)
            || !self.ungoverned.iter().any(|n| n == namespace)
    }

    fn policies(&self, namespace: &str) -> Vec<PolicySummary> {
        self.policies.get(namespace).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, opt_out: bool, selector: Option<Selector>) -> PolicySummary {
        PolicySummary {
            name: name.into(),
            mode: PolicyMode::Enforce,
            selector,
            allow_opt_out: opt_out,
            egress: vec![],
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn opt_out_needs_every_selecting_policy_to_allow_it() {
        let app = Selector {
            match_labels: labels(&[("app", "a")]),
            match_expressions: vec![],
        };
        let mut ns = NamespaceView {
            name: "n".into(),
            governed: true,
            policies: vec![policy("all", true, Some(Selector::default()))],
        };
        assert!(ns.opt_out_permitted(&labels(&[("app", "a")])));
        ns.policies.push(policy("strict", false, Some(app)));
        assert!(!ns.opt_out_permitted(&labels(&[("app", "a")])));
        assert!(ns.opt_out_permitted(&labels(&[("app", "b")])));
        // No selecting policy, no opt-out; a malformed selector selects nothing.
        let ns = NamespaceView {
            name: "n".into(),
            governed: true,
            policies: vec![policy("bad", true, None)],
        };
        assert!(!ns.opt_out_permitted(&labels(&[])));
    }

    #[test]
    fn allowed_egress_is_sorted_deduplicated_and_skips_disabled_policies() {
        let rule = |cidr: &str, ports: &[u16]| EgressRule {
            cidr: cidr.into(),
            ports: ports.to_vec(),
        };
        let mut a = policy("a", false, Some(Selector::default()));
        a.egress = vec![
            rule("198.19.0.0/16", &[443, 80, 443]),
            rule("198.18.0.0/16", &[]),
        ];
        let mut b = policy("b", false, Some(Selector::default()));
        b.egress = vec![rule("198.18.0.0/16", &[])];
        let mut c = policy("c", false, Some(Selector::default()));
        c.mode = PolicyMode::Disabled;
        c.egress = vec![rule("198.18.128.0/17", &[])];
        let ns = NamespaceView {
            name: "n".into(),
            governed: true,
            policies: vec![a, b, c],
        };
        assert_eq!(
            ns.allowed_egress(&labels(&[])),
            vec![
                "198.18.0.0/16".to_string(),
                "198.19.0.0/16=80,443".to_string()
            ]
        );
    }
}
