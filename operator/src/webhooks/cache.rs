//! The webhooks' view of the shared cache's Namespaces and EgressPolicies,
//! answering [`PolicyView`] for the pure admission functions.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};
use tollgate_admission::{ENABLED, LABEL_INJECT, PolicySummary, PolicyView};
use tollgate_crds::EgressPolicy;

use crate::cache::{ClusterCache, Readiness};

/// The view, cheap to clone.
#[derive(Clone)]
pub struct AdmissionCache {
    namespaces: Store<Namespace>,
    policies: Store<EgressPolicy>,
    readiness: Readiness,
}

impl Debug for AdmissionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionCache")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl AdmissionCache {
    /// The view over the process's shared cache.
    pub fn of(cache: &ClusterCache) -> Self {
        Self {
            namespaces: cache.namespaces.clone(),
            policies: cache.policies.clone(),
            readiness: cache.readiness(),
        }
    }

    /// A view over stores filled by someone else (tests).
    pub fn from_stores(namespaces: Store<Namespace>, policies: Store<EgressPolicy>) -> Self {
        Self {
            namespaces,
            policies,
            readiness: Readiness::ready(),
        }
    }

    /// Whether the shared cache has listed everything once.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Waits until ready, or `timeout` passes; says which.
    pub async fn wait_ready(&self, timeout: std::time::Duration) -> bool {
        self.readiness.wait(timeout).await
    }

    /// Namespaces labelled `tollgate.dev/inject=enabled`, in name order.
    pub fn governed_namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .namespaces
            .state()
            .iter()
            .filter(|ns| is_enabled(ns))
            .filter_map(|ns| ns.metadata.name.clone())
            .collect();
        names.sort();
        names
    }

    /// The EgressPolicies of a namespace, in name order.
    pub fn policy_objects(&self, namespace: &str) -> Vec<Arc<EgressPolicy>> {
        let mut policies: Vec<Arc<EgressPolicy>> = self
            .policies
            .state()
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace))
            .collect();
        policies.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        policies
    }
}

fn is_enabled(ns: &Namespace) -> bool {
    ns.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_INJECT))
        .is_some_and(|v| v == ENABLED)
}

impl PolicyView for AdmissionCache {
    fn namespace_governed(&self, namespace: &str) -> bool {
        // Unknown means the cache lags the API server, which only sends
        // governed namespaces: fail closed.
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .is_none_or(|ns| is_enabled(&ns))
    }

    fn policies(&self, namespace: &str) -> Vec<PolicySummary> {
        self.policy_objects(namespace)
            .iter()
            .map(|p| PolicySummary::of(p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use serde::de::DeserializeOwned;
    use serde_json::json;
    use std::hash::Hash;

    fn apply<K>(writer: &mut reflector::store::Writer<K>, value: serde_json::Value)
    where
        K: Resource + Clone + DeserializeOwned + 'static,
        K::DynamicType: Default + Eq + Hash + Clone,
    {
        let object: K = serde_json::from_value(value).unwrap();
        writer.apply_watcher_event(&Event::Apply(object));
    }

    #[test]
    fn answers_from_the_stores_and_fails_closed_on_unknown_namespaces() {
        let (namespaces, mut ns_writer) = reflector::store::<Namespace>();
        let (policies, mut policy_writer) = reflector::store::<EgressPolicy>();
        apply(
            &mut ns_writer,
            json!({"metadata": {"name": "on", "labels": {"tollgate.dev/inject": "enabled"}}}),
        );
        apply(
            &mut ns_writer,
            json!({"metadata": {"name": "off", "labels": {"tollgate.dev/inject": "disabled"}}}),
        );
        for (ns, name) in [("on", "b"), ("on", "a"), ("off", "c")] {
            apply(
                &mut policy_writer,
                json!({"apiVersion": "tollgate.dev/v1alpha1", "kind": "EgressPolicy",
                    "metadata": {"name": name, "namespace": ns}, "spec": {}}),
            );
        }
        let cache = AdmissionCache::from_stores(namespaces, policies);
        assert!(cache.namespace_governed("on"));
        assert!(!cache.namespace_governed("off"));
        assert!(cache.namespace_governed("not-yet-seen"));
        assert_eq!(cache.governed_namespaces(), vec!["on".to_string()]);
        let names: Vec<String> = cache.policies("on").into_iter().map(|p| p.name).collect();
        assert_eq!(names, vec!["a", "b"]);
    }
}
