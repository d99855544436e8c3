//! Reflector caches of Namespaces and EgressPolicies, answering
//! [`PolicyView`] for the pure admission functions.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, reflector as reflect};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tollgate_admission::{ENABLED, LABEL_INJECT, PolicySummary, PolicyView};
use tollgate_crds::EgressPolicy;

/// The caches, cheap to clone.
#[derive(Clone)]
pub struct AdmissionCache {
    namespaces: Store<Namespace>,
    policies: Store<EgressPolicy>,
    listed: [Arc<AtomicBool>; 2],
}

impl Debug for AdmissionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionCache")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

fn watch<K>(api: Api<K>, listed: Arc<AtomicBool>) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let stream = reflect(
        writer,
        watcher::watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(async move {
        stream
            .for_each(|event| {
                match event {
                    Ok(Event::InitDone) => listed.store(true, Ordering::Release),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(kind, error = %e, "admission watch failed; retrying"),
                }
                futures::future::ready(())
            })
            .await;
    });
    reader
}

impl AdmissionCache {
    /// A cache over stores filled by someone else (tests).
    pub fn from_stores(namespaces: Store<Namespace>, policies: Store<EgressPolicy>) -> Self {
        Self {
            namespaces,
            policies,
            listed: [
                Arc::new(AtomicBool::new(true)),
                Arc::new(AtomicBool::new(true)),
            ],
        }
    }

    /// Starts the watches.
    pub fn start(client: &Client) -> Self {
        let listed = [
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        ];
        Self {
            namespaces: watch(Api::all(client.clone()), listed[0].clone()),
            policies: watch(Api::all(client.clone()), listed[1].clone()),
            listed,
        }
    }

    /// Whether both caches have listed once.
    pub fn is_ready(&self) -> bool {
        self.listed.iter().all(|l| l.load(Ordering::Acquire))
    }

    /// Waits until both caches have listed, or `timeout` passes.
    pub async fn wait_ready(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        true
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
    use serde_json::json;

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
