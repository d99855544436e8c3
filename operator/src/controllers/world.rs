//! [`World`]: the snapshot of cluster state one reconcile pass reads. Plain
//! data, so that every `status_for` function is pure and tested without an API
//! server. Secrets appear only as the names of their keys: values are never
//! held here.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tollgate_crds::compile::{ClusterObjects, Compiled, compile_namespace_config};
use tollgate_crds::{
    ClusterEgressQuota, EgressPolicy, EgressQuota, LLMProvider, RecorderConfig, TrustAnchor,
};

use super::usage::UsageObservation;
use tollgate_wire::key_health::KeyHealthAnswer;

/// The label that puts a namespace under Tollgate.
pub const INJECT_LABEL: &str = "tollgate.dev/inject";

/// Everything a pass reads.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub now: Timestamp,
    pub operator_namespace: String,
    pub providers: Vec<LLMProvider>,
    pub policies: Vec<EgressPolicy>,
    pub quotas: Vec<EgressQuota>,
    pub cluster_quotas: Vec<ClusterEgressQuota>,
    pub trust_anchors: Vec<TrustAnchor>,
    pub recorder_configs: Vec<RecorderConfig>,
    /// Secrets of the operator namespace: name → key names.
    pub secrets: BTreeMap<String, BTreeSet<String>>,
    /// Namespaces: name → labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Quota usage last read from the recorder, by [`quota_key`].
    pub usage: BTreeMap<String, UsageObservation>,
    /// Provider key health last read from the recorder.
    pub key_health: KeyHealthObservation,
}

/// What the last read of the recorder's key health said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyHealthObservation {
    /// The last answer read (none before the first success).
    pub answer: Option<KeyHealthAnswer>,
    /// Why the last read failed; none if it succeeded.
    pub error: Option<String>,
}

impl World {
    pub fn provider(&self, name: &str) -> Option<&LLMProvider> {
        self.providers.iter().find(|p| p.name_any() == name)
    }

    pub fn trust_anchor(&self, name: &str) -> Option<&TrustAnchor> {
        self.trust_anchors.iter().find(|a| a.name_any() == name)
    }

    /// Whether `namespace` carries `tollgate.dev/inject=enabled`.
    pub fn is_governed(&self, namespace: &str) -> bool {
        self.namespaces
            .get(namespace)
            .and_then(|labels| labels.get(INJECT_LABEL))
            .is_some_and(|v| v == "enabled")
    }

    /// Compiles the gateway config of `namespace` from this snapshot.
    pub fn compile(&self, namespace: &str) -> Compiled {
        let empty = BTreeMap::new();
        let labels = self.namespaces.get(namespace).unwrap_or(&empty);
        compile_namespace_config(
            namespace,
            labels,
            ClusterObjects {
                providers: &self.providers,
                policies: &self.policies,
                quotas: &self.quotas,
                cluster_quotas: &self.cluster_quotas,
                trust_anchors: &self.trust_anchors,
            },
        )
    }
}

/// The key under which a quota's usage is kept: `EgressQuota/ns/name` or
/// `ClusterEgressQuota/name`, as in compilation problems.
pub fn quota_key(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn governed_means_inject_enabled() {
        let mut world = World::default();
        world.namespaces.insert(
            "on".into(),
            BTreeMap::from([(INJECT_LABEL.to_string(), "enabled".to_string())]),
        );
        world.namespaces.insert(
            "off".into(),
            BTreeMap::from([(INJECT_LABEL.to_string(), "disabled".to_string())]),
        );
        assert!(world.is_governed("on"));
        assert!(!world.is_governed("off"));
        assert!(!world.is_governed("missing"));
    }
}
